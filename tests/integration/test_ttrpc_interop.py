"""ttrpc interop with Go: our client against Debian's containerd-shim-runc-v2 (1.6), and
Debian's ctr (its `ctr shim` ttrpc client) against our server.

The shim puts its socket under /run/containerd/s, so it is started in a private mount
namespace with a tmpfs there; we reach the socket through /proc/<shim pid>/root, which
resolves paths in the shim's mount namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from pycontainerd import errdefs
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd.ttrpc import Client, RequestContext, Server, namespace_metadata

SHIM = shutil.which("containerd-shim-runc-v2")
TASK = "containerd.task.v2.Task"
NAMESPACE = "t"
TASK_ID = "x"

pytestmark = pytest.mark.skipif(SHIM is None, reason="containerd-shim-runc-v2 not installed")


@dataclass
class GoShim:
    pid: int
    socket: Path  # reachable from our mount namespace


async def _wait_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (it is not our child: watch a pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        async with asyncio.timeout(timeout):
            await exited.wait()
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _find_shim(bundle: Path) -> int | None:
    """The shim daemon started for ``bundle``: the shim binary running with it as cwd
    (containerd 1.6 learns the pid only through Connect)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "cwd").resolve() == bundle and "containerd-shim" in (
                entry / "exe"
            ).resolve().name:
                return int(entry.name)
    return None


@pytest.fixture
async def go_shim(tmp_path: Path) -> AsyncIterator[GoShim]:
    assert SHIM is not None
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    # The shim writes its log to a fifo named "log" in the bundle, as the daemon sets up.
    os.mkfifo(bundle / "log")
    log_fd = os.open(bundle / "log", os.O_RDONLY | os.O_NONBLOCK)
    env = {**os.environ, "TTRPC_ADDRESS": str(tmp_path / "events.sock")}
    script = (
        "mkdir -p /run/containerd && mount -t tmpfs tmpfs /run/containerd && "
        f'exec "{SHIM}" -namespace {NAMESPACE} -address {tmp_path / "grpc.sock"} '
        f"-publish-binary /bin/true -id {TASK_ID} start"
    )
    pid: int | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            cwd=bundle,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        pid = _find_shim(bundle.resolve())
        assert proc.returncode == 0, err.decode()
        address = out.decode().strip()
        assert address.startswith("unix:///run/containerd/s/"), address
        assert pid is not None
        socket = Path(f"/proc/{pid}/root") / address.removeprefix("unix:///")
        assert stat.S_ISSOCK(socket.stat().st_mode)
        yield GoShim(pid, socket)
    finally:
        pid = pid or _find_shim(bundle.resolve())
        if pid is not None and not await _wait_exit(pid, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await _wait_exit(pid, 10)
        os.close(log_fd)


async def test_connect_unknown_method_and_shutdown(go_shim: GoShim) -> None:
    client = await Client.connect(go_shim.socket, timeout=10)
    try:
        md = namespace_metadata(NAMESPACE)
        reply = await client.call(
            TASK,
            "Connect",
            shim_pb2.ConnectRequest(id=TASK_ID),
            shim_pb2.ConnectResponse,
            metadata=md,
            timeout=10,
        )
        assert reply.shim_pid == go_shim.pid

        with pytest.raises(errdefs.NotImplemented_):
            await client.call(TASK, "NoSuchMethod", Empty(), Empty, metadata=md, timeout=10)
        with pytest.raises(errdefs.NotImplemented_):
            await client.call("no.such.Service", "Connect", Empty(), Empty, metadata=md)

        # The shim may exit before its answer is flushed; containerd accepts both.
        with contextlib.suppress(errdefs.Unavailable):
            await client.call(
                TASK,
                "Shutdown",
                shim_pb2.ShutdownRequest(id=TASK_ID),
                Empty,
                metadata=md,
                timeout=10,
            )
        await asyncio.wait_for(client.wait_closed(), 10)
        assert await _wait_exit(go_shim.pid, 10)
    finally:
        await client.close()


async def test_concurrent_calls_against_go_server(go_shim: GoShim) -> None:
    async with await Client.connect(go_shim.socket) as client:
        md = namespace_metadata(NAMESPACE)
        replies = await asyncio.gather(
            *(
                client.call(
                    TASK,
                    "Connect",
                    shim_pb2.ConnectRequest(id=TASK_ID),
                    shim_pb2.ConnectResponse,
                    metadata=md,
                    timeout=10,
                )
                for _ in range(50)
            )
        )
        assert {r.shim_pid for r in replies} == {go_shim.pid}
        # State of a task that does not exist: the Go side's NotFound comes back as ours.
        with pytest.raises(errdefs.NotFound):
            await client.call(
                TASK,
                "State",
                shim_pb2.StateRequest(id="missing"),
                shim_pb2.StateResponse,
                metadata=md,
                timeout=10,
            )


# Go's ttrpc client (Debian's ctr, `ctr shim`) against our server.

CTR = shutil.which("ctr")


async def _ctr_shim(tmp_path: Path, our_socket: Path, *args: str) -> tuple[int, str, str]:
    """Runs ``ctr shim --id <TASK_ID> <args>`` in a private mount namespace where the
    socket path ctr computes for the shim is a symlink to ``our_socket``."""
    assert CTR is not None
    address = str(tmp_path / "containerd.sock")
    digest = hashlib.sha256(os.path.join(address, NAMESPACE, TASK_ID).encode()).hexdigest()
    script = (
        "mkdir -p /run/containerd && mount -t tmpfs tmpfs /run/containerd && "
        f"mkdir /run/containerd/s && ln -s {our_socket} /run/containerd/s/{digest} && "
        f'exec "{CTR}" --address {address} --namespace {NAMESPACE} shim --id {TASK_ID} '
        + " ".join(args)
    )
    proc = await asyncio.create_subprocess_exec(
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.skipif(CTR is None, reason="Debian's ctr is not installed")
async def test_go_client_against_our_server(tmp_path: Path) -> None:
    seen: list[RequestContext] = []

    async def state(request: Message, ctx: RequestContext) -> Message:
        assert isinstance(request, shim_pb2.StateRequest)
        seen.append(ctx)
        return shim_pb2.StateResponse(id=request.id, pid=4242, bundle="/our/bundle")

    async def delete(request: Message, ctx: RequestContext) -> Message:
        raise errdefs.NotFound(f"task {TASK_ID}")

    server = Server()
    server.register(
        TASK,
        {
            "State": (shim_pb2.StateRequest, state),
            "Delete": (shim_pb2.DeleteRequest, delete),
        },
    )
    our_socket = tmp_path / "our.sock"
    await server.serve_unix(our_socket)
    try:
        code, out, err = await _ctr_shim(tmp_path, our_socket, "state")
        assert code == 0, err
        state_json = json.loads(out)
        assert state_json["id"] == TASK_ID
        assert state_json["pid"] == 4242
        assert state_json["bundle"] == "/our/bundle"
        assert seen and seen[0].method == "State"

        code, out, err = await _ctr_shim(tmp_path, our_socket, "delete", TASK_ID)
        assert code != 0
        assert f"task {TASK_ID}: not found" in err

        code, out, err = await _ctr_shim(tmp_path, our_socket, "start")  # not registered
        assert code != 0
        assert "not implemented" in err or "Unimplemented" in err, err
    finally:
        await server.close(grace=1)
