"""The shim binary's ``start`` (fork a server, print its address, reuse a group's
shim) and ``delete`` commands, and Connect/Shutdown over ttrpc."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd.shim.address import socket_path
from pycontainerd.ttrpc import Client, namespace_metadata

SHIM = str(Path(sys.executable).parent / "containerd-shim-pyrunc-v2")
TASK = "containerd.task.v2.Task"


@pytest.fixture
def state() -> Iterator[Path]:
    # Short, so that <state>/s/<64 hex> fits in a unix socket path.
    path = Path(tempfile.mkdtemp(prefix="shim", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _bundle(state: Path, cid: str, annotations: dict[str, str] | None = None) -> Path:
    bundle = state / "io.containerd.runtime.v2.task" / "ns" / cid
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"annotations": annotations or {}}))
    return bundle


def _shim(bundle: Path, cid: str, action: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TTRPC_ADDRESS"}
    env["MAX_SHIM_VERSION"] = "2"
    argv = [SHIM, "-namespace", "ns", "-address", "/tmp/none.sock", "-publish-binary",
            "/bin/false", "-id", cid, action]  # fmt: skip
    return subprocess.run(argv, cwd=bundle, env=env, capture_output=True, timeout=30, check=False)


async def test_start_group_connect_shutdown(state: Path) -> None:
    group = {"io.containerd.runc.v2.group": "g"}
    first = _bundle(state, "a", group)
    result = _shim(first, "a", "start")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["version"] == 2 and answer["protocol"] == "ttrpc"
    address = answer["address"]
    assert address.startswith(f"unix://{state}/s/")
    assert (first / "address").read_text() == address
    pid = int((first / "shim.pid").read_text())

    second = _bundle(state, "b", group)
    again = _shim(second, "b", "start")
    assert json.loads(again.stdout)["address"] == address  # the group's shim, reused
    assert not (second / "shim.pid").exists()

    pidfd = os.pidfd_open(pid)
    client = await Client.connect(socket_path(address))
    try:
        meta = namespace_metadata("ns")
        connected = await client.call(
            TASK, "Connect", shim_pb2.ConnectRequest(id="a"), shim_pb2.ConnectResponse,
            metadata=meta, timeout=10,
        )  # fmt: skip
        assert connected.shim_pid == pid
        with pytest.raises(Exception, match="does not exist"):
            await client.call(
                TASK, "State", shim_pb2.StateRequest(id="a"), shim_pb2.StateResponse,
                metadata=meta, timeout=10,
            )  # fmt: skip
        await client.call(
            TASK, "Shutdown", shim_pb2.ShutdownRequest(id="a"), empty_pb2.Empty,
            metadata=meta, timeout=10,
        )  # fmt: skip
        await client.wait_closed()
    finally:
        await client.close()
    # The shim is not our child: its pidfd becomes readable when it exits.
    try:
        assert select.select([pidfd], [], [], 10)[0], "shim did not exit"
    finally:
        os.close(pidfd)
    assert not os.path.exists(socket_path(address))


def test_delete_prints_a_delete_response(state: Path) -> None:
    bundle = _bundle(state, "gone")
    result = _shim(bundle, "gone", "delete")
    assert result.returncode == 0, result.stderr
    response = shim_pb2.DeleteResponse.FromString(result.stdout)
    assert response.exit_status == 137
    assert response.exited_at.seconds > 0


@pytest.mark.parametrize(
    ("pid", "status", "ns"), [(0, 137, 1_700_000_000_123_456_789), (4242, 0, 5), (1, 300, 0)]
)
def test_hand_encoded_delete_response_matches_protobuf(pid: int, status: int, ns: int) -> None:
    from pycontainerd.shim.cleanup import encode_delete_response

    decoded = shim_pb2.DeleteResponse.FromString(encode_delete_response(pid, status, ns))
    assert (decoded.pid, decoded.exit_status) == (pid, status)
    assert decoded.exited_at.seconds * 1_000_000_000 + decoded.exited_at.nanos == ns


def test_delete_removes_a_dead_shims_socket_but_not_a_live_one(state: Path) -> None:
    bundle = _bundle(state, "dead")
    path = state / "s" / "dead.sock"
    path.parent.mkdir()
    (bundle / "address").write_text(f"unix://{path}")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a shim killed with -9 leaves
    assert _shim(bundle, "dead", "delete").returncode == 0
    assert not path.exists()

    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(str(path))
        live.listen(1)  # a pooled shim still serving its other containers
        assert _shim(bundle, "dead", "delete").returncode == 0
        assert path.exists()
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    assert _shim(bundle, "dead", "delete").returncode == 0
    assert path.read_text() == "not a socket"
