"""The daemon's spine, driven by Debian's Go ctr and compared with Debian's containerd."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from pycontainerd import __version__, harness, version
from pycontainerd._api.containerd.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from tests.integration.conftest import CTR, Ctr


def test_version_shows_our_server(ctr: Ctr) -> None:
    out = ctr("version").stdout
    server = out.split("Server:", 1)[1]
    assert f"Version:  {__version__}" in server
    assert f"Revision: {version.revision()}" in server
    assert "UUID: " in server


def test_uuid_persists_across_restart(tmp_path: Path) -> None:
    with harness.pycontainerd(tmp_path) as d:
        first = Ctr(d.address)("version").stdout.split("UUID: ")[1].strip()
    with harness.pycontainerd(tmp_path) as d:
        second = Ctr(d.address)("version").stdout.split("UUID: ")[1].strip()
    assert first == second and len(first) == 36


def test_plugins_ls_lists_plugins_in_init_order(ctr: Ctr) -> None:
    out = ctr("plugins", "ls").stdout.splitlines()
    assert out[0].split() == ["TYPE", "ID", "PLATFORMS", "STATUS"]
    rows = [line.split() for line in out[1:]]
    ids = [(r[0], r[1]) for r in rows]
    for expected in [
        ("io.containerd.metadata.v1", "sqlite"),
        ("io.containerd.event.v1", "exchange"),
        ("io.containerd.service.v1", "introspection-service"),
        ("io.containerd.service.v1", "namespaces-service"),
        ("io.containerd.grpc.v1", "introspection"),
        ("io.containerd.grpc.v1", "events"),
        ("io.containerd.grpc.v1", "healthcheck"),
        ("io.containerd.grpc.v1", "namespaces"),
        ("io.containerd.grpc.v1", "version"),
    ]:
        assert expected in ids
    # btrfs is skipped unless the root is on btrfs, as in containerd
    statuses = {(r[0], r[1]): r[-1] for r in rows}
    assert statuses.pop(("io.containerd.snapshotter.v1", "btrfs")) == "skip"
    assert all(status == "ok" for status in statuses.values())
    # dependencies come first
    assert (
        ids.index(("io.containerd.metadata.v1", "sqlite"))
        < ids.index(("io.containerd.service.v1", "namespaces-service"))
        < ids.index(("io.containerd.grpc.v1", "namespaces"))
    )


def test_plugins_ls_detailed_and_filtered(ctr: Ctr, daemon: harness.Daemon) -> None:
    out = " ".join(ctr("plugins", "ls", "-d", "id==sqlite").stdout.split())
    assert "Type: io.containerd.metadata.v1 ID: sqlite" in out
    assert "Requires: io.containerd.content.v1" in out
    assert f"path {daemon.root}/io.containerd.metadata.v1.sqlite/meta.db" in out
    assert "io.containerd.grpc.v1" not in out
    bad = ctr("plugins", "ls", "id==", check=False)
    assert bad.returncode != 0 and "invalid argument" in bad.stderr


def test_disabled_and_failed_plugins(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.version"]\n')
    with harness.pycontainerd(tmp_path, "--config", str(config)) as d:
        c = Ctr(d.address)
        assert "version" not in [
            line.split()[1] for line in c("plugins", "ls").stdout.splitlines()[1:]
        ]
        res = c("version", check=False)
        assert res.returncode != 0 and "Unimplemented" in res.stderr


def _ns_rows(ctr: Ctr) -> list[list[str]]:
    return [line.split() for line in ctr("namespaces", "ls").stdout.splitlines()]


NAMESPACE_SCRIPT: list[tuple[str, ...]] = [
    ("namespaces", "create", "foo", "a=b"),
    ("namespaces", "create", "bar"),
    ("namespaces", "ls"),
    ("namespaces", "create", "foo"),
    ("namespaces", "create", "bad name"),
    ("namespaces", "create", "x" * 77),
    ("namespaces", "label", "foo", "c=d"),
    ("namespaces", "label", "foo", "a="),
    ("namespaces", "ls", "-q"),
    ("namespaces", "ls"),
    ("namespaces", "label", "nope", "a=b"),
    ("namespaces", "rm", "nope"),
    ("namespaces", "rm", "bar"),
    ("namespaces", "ls"),
]


def test_namespaces_behave_as_containerd(ctr: Ctr, reference: Ctr) -> None:
    for args in NAMESPACE_SCRIPT:
        ours = ctr(*args, check=False)
        theirs = reference(*args, check=False)
        assert (ours.returncode, ours.stdout, ours.stderr) == (
            theirs.returncode,
            theirs.stdout,
            theirs.stderr,
        ), f"ctr {' '.join(args)}"


def test_namespace_survives_restart(tmp_path: Path) -> None:
    with harness.pycontainerd(tmp_path) as d:
        Ctr(d.address)("namespaces", "create", "keep", "k=v")
    with harness.pycontainerd(tmp_path) as d:
        assert ["keep", "k=v"] in _ns_rows(Ctr(d.address))


def _read_lines_until(proc: subprocess.Popen[bytes], want: str, timeout: float) -> list[str]:
    """Lines from ``proc.stdout`` until one contains ``want`` (or the timeout).

    Reads the pipe's file descriptor directly: a buffered reader could hold a line that
    ``select`` would then never report.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = _PENDING.setdefault(fd, bytearray())
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            lines.append(line.decode(errors="replace"))
            if want in lines[-1]:
                return lines
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no {want!r} from ctr events; got {lines}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"ctr events ended; got {lines}")
        pending += chunk


_PENDING: dict[int, bytearray] = {}


def test_ctr_events_receives_namespace_events(ctr: Ctr) -> None:
    events = subprocess.Popen(
        [str(CTR), "--address", str(ctr.address), "events"], stdout=subprocess.PIPE
    )
    try:
        # The subscription is in place once a probe event comes through.
        for i in range(50):
            ctr("namespaces", "create", f"probe{i}")
            try:
                _read_lines_until(events, f"probe{i}", 0.5)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("ctr events never subscribed")
        ctr("namespaces", "create", "evt", "l=v")
        ctr("namespaces", "rm", "evt")
        lines = _read_lines_until(events, "/namespaces/delete", 10)
        create = next(line for line in lines if "/namespaces/create" in line)
        assert ' evt /namespaces/create {"name":"evt","labels":{"l":"v"}}' in create
        delete = next(line for line in lines if "/namespaces/delete" in line)
        assert ' evt /namespaces/delete {"name":"evt"}' in delete
    finally:
        events.terminate()
        events.wait(10)
        assert events.stdout is not None
        events.stdout.close()


def test_events_filter_and_ctr_events_stop_with_daemon(tmp_path: Path) -> None:
    d = harness.start(
        harness.pycontainerd_argv(tmp_path / "root", tmp_path / "state", tmp_path / "c.sock"),
        address=tmp_path / "c.sock",
        root=tmp_path / "root",
        state=tmp_path / "state",
        log_path=tmp_path / "log",
    )
    try:
        c = Ctr(d.address)
        events = subprocess.Popen(
            [str(CTR), "--address", str(d.address), "events", 'topic=="/namespaces/delete"'],
            stdout=subprocess.PIPE,
        )
        for i in range(50):
            c("namespaces", "create", f"p{i}")
            c("namespaces", "rm", f"p{i}")
            try:
                lines = _read_lines_until(events, f"p{i}", 0.5)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("ctr events never subscribed")
        assert all("/namespaces/delete" in line for line in lines)
        assert d.stop() == 0
        assert events.wait(10) is not None  # the stream ended with the daemon
    finally:
        d.kill()
        if events.poll() is None:
            events.kill()
            events.wait()
        assert events.stdout is not None
        events.stdout.close()


def test_socket_permissions_and_refusal(tmp_path: Path, daemon: harness.Daemon) -> None:
    st = daemon.address.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    fresh = tmp_path / "sockdir" / "sub"
    other = tmp_path / "second"
    other.mkdir()
    argv = harness.pycontainerd_argv(other / "root", other / "state", daemon.address)
    with pytest.raises(harness.DaemonError, match="another daemon is already serving"):
        harness.start(
            argv,
            address=daemon.address,
            root=other / "root",
            state=other / "state",
            log_path=other / "log",
        )
    # a fresh socket directory is made 0711
    with harness.pycontainerd(other, "--address", str(fresh / "x.sock")):
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o711


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # bound, never listened: a stale socket
    with harness.pycontainerd(tmp_path) as d:
        Ctr(d.address)("version")


def test_malformed_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    for text, message in [
        ("version = 2\n[grpc]\nadress = 'x'\n", "config grpc.adress: unknown key"),
        ("version = 2\n[plugins.'io.containerd.nope.v1.x']\n", "unknown plugin"),
        ("this is not toml", "config.toml"),
    ]:
        config.write_text(text)
        with (
            pytest.raises(harness.DaemonError, match="exited with status 1") as info,
            harness.pycontainerd(tmp_path, "--config", str(config)),
        ):
            pass
        assert message in str(info.value)


def test_garbage_on_the_socket_leaves_daemon_serving(ctr: Ctr) -> None:
    for payload in [
        b"\x00" * 64,
        b"GET / HTTP/1.1\r\n\r\n",
        os.urandom(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512),
    ]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(ctr.address))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    assert "Server:" in ctr("version").stdout


def test_oversized_message_is_rejected_and_daemon_keeps_serving(ctr: Ctr) -> None:
    with grpc.insecure_channel(
        f"unix://{ctr.address}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        stub = namespace_pb2_grpc.NamespacesStub(ch)
        big = namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name="big", labels={"k": "v" * (17 << 20)})
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Create(big, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a label over 4096 bytes that fits in a message is a clear INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            stub.Create(
                namespace_pb2.CreateNamespaceRequest(
                    namespace=namespace_pb2.Namespace(name="big", labels={"k": "v" * 5000})
                ),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "label key and value greater than maximum size (4096 bytes)" in (
            info.value.details() or ""
        )
    assert "big" not in ctr("namespaces", "ls", "-q").stdout.split()
    assert "Server:" in ctr("version").stdout


def test_update_with_bad_mask_is_invalid_argument(ctr: Ctr) -> None:
    ctr("namespaces", "create", "m")
    with grpc.insecure_channel(f"unix://{ctr.address}") as ch:
        stub = namespace_pb2_grpc.NamespacesStub(ch)
        req = namespace_pb2.UpdateNamespaceRequest(namespace=namespace_pb2.Namespace(name="m"))
        req.update_mask.paths.append("name")
        with pytest.raises(grpc.RpcError) as info:
            stub.Update(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert 'cannot update "name" field' in (info.value.details() or "")


def test_sigterm_and_sigint_stop_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        base = tmp_path / sig.name
        base.mkdir()
        with harness.pycontainerd(base) as d:
            Ctr(d.address)("namespaces", "create", "x")
            assert d.stop(sig=sig) == 0
        assert not d.address.exists()
        assert "stopped" in d.log()
