"""The shim's fork server: its request encoding, and a real zygote forking a server."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.shim import zygote
from pycontainerd.shim.address import Flags


def _request(tmp: Path, **env: str) -> zygote.Request:
    flags = Flags(namespace="ns1", address="/run/x.sock", id="c1", bundle=str(tmp), debug=True)
    argv = ["containerd-shim-pyrunc-v2", "-namespace", "ns1", "-id", "c1"]
    return zygote.Request(flags, f"unix://{tmp}/shim.sock", str(tmp), argv, env)


def test_request_round_trip(tmp_path: Path) -> None:
    request = _request(tmp_path, TTRPC_ADDRESS="/run/x.sock.ttrpc", EMPTY="", EQ="a=b")
    encoded = zygote.encode_request(request)
    decoded = zygote.decode_request(encoded[4:])
    assert int.from_bytes(encoded[:4], "big") == len(encoded) - 4
    assert decoded.address == request.address and decoded.cwd == str(tmp_path)
    assert decoded.argv == request.argv and decoded.env == request.env
    assert (decoded.flags.namespace, decoded.flags.id, decoded.flags.debug) == ("ns1", "c1", True)
    assert decoded.pool == 0
    request.pool = 8
    assert zygote.decode_request(zygote.encode_request(request)[4:]).pool == 8


def _words(*tail: str) -> bytes:
    head = ["pyrunc-zygote/1", "unix:///s", "/", "", "0", "n", "a", "", "i", "/b"]
    return "\0".join([*head, *tail]).encode()


@pytest.mark.parametrize(
    "payload",
    [b"", b"GET / HTTP/1.1", b"pyrunc-zygote/1\0a", b"\xff" * 64,
     _words("99"),  # more argv words announced than sent
     _words("0").replace(b"\0/\0", b"\0rel\0", 1),  # a relative directory
     _words("0", "NOEQ"),  # an environment entry without '='
     _words("0").replace(b"\0\x000\0", b"\0\0x\0", 1)],  # a pool size that is no number
)  # fmt: skip
def test_garbage_requests_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        zygote.decode_request(payload)


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    """Waits on the process's pidfd (it need not be our child), then reaps it if it is."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not readable:
        raise AssertionError(f"process {pid} still running")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _pids_shown_as(program: str, path: str) -> list[int]:
    """Processes whose command line is ``program path`` (zygotes and spares show so)."""
    shown = [program.encode(), path.encode()]
    return [pid for pid, argv in harness.command_lines() if argv[:2] == shown]


def _zygote_pid(path: str) -> int:
    found = _pids_shown_as(zygote.ZYGOTE_CMDLINE[0], path)
    assert found, f"no zygote serving {path}"
    return found[0]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # Removing the socket makes the zygote exit; kill whatever is left regardless.
    path = zygote.zygote_path(str(tmp_path))
    with contextlib.suppress(AssertionError):
        pid = _zygote_pid(path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        try:
            _wait_gone(pid, timeout=5)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)


def _ask_for_server(root: Path) -> tuple[Path, zygote.Request, int | None]:
    """A bundle with a listening shim socket, handed to the zygote of ``root`` (started
    if needed): the bundle, the request and the server's pid."""
    bundle = root / "bundle"
    bundle.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(bundle / "shim.sock"))
    listener.listen(8)
    request = _request(bundle, PATH=os.environ.get("PATH", ""))
    request.address = f"unix://{bundle}/shim.sock"
    try:
        served = zygote.fork_server(listener, request, str(root))
    finally:
        listener.close()
    if served is None:
        return bundle, request, None
    pid, address = served
    assert address == request.address  # no pool: its own socket
    return bundle, request, pid


def test_zygote_forks_a_serving_shim(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    bundle, request, pid = _ask_for_server(root)
    assert pid is not None
    try:
        zpid = _zygote_pid(zygote.zygote_path(str(root)))
        assert harness.parent_pid(pid) == zpid  # forked by the zygote
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert cmdline == [w.encode() for w in request.argv]
        # The forked server answers ttrpc on the socket it was handed.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(bundle / "shim.sock"))
        # A second request reuses the same zygote.
        again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        again.bind(str(bundle / "two.sock"))
        again.listen(8)
        request.address = f"unix://{bundle}/two.sock"
        served = zygote.fork_server(again, request, str(root))
        again.close()
        assert served is not None
        pid2 = served[0]
        assert pid2 != pid
        assert _zygote_pid(zygote.zygote_path(str(root))) == zpid
        os.kill(pid2, signal.SIGKILL)
    finally:
        os.kill(pid, signal.SIGKILL)
    os.unlink(zygote.zygote_path(str(root)))
    _wait_gone(zpid)  # its socket is gone: it exits


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zygote.ZYGOTE_ENV, "0")
    assert not zygote.enabled()
    monkeypatch.delenv(zygote.ZYGOTE_ENV)
    assert zygote.enabled()


def test_zygote_runs_the_start_command(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path = zygote.zygote_path(str(root))
    bundle = root / "io.containerd.runtime.v2.task" / "ns1" / "c1"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    # A daemon address of its own: the shim socket's name hashes it.
    argv = ["containerd-shim-pyrunc-v2", "-namespace", "ns1", "-address", f"{root}/d.sock",
            "-id", "c1", "start"]  # fmt: skip
    env = {"MAX_SHIM_VERSION": "2", "PATH": os.environ.get("PATH", "")}
    assert zygote.run_start(path, argv, env, str(bundle), 10) is None  # no zygote yet

    assert zygote._spawn(path)
    zpid = _zygote_pid(path)
    ran = zygote.run_start(path, argv, env, str(bundle), 10)
    assert ran is not None
    code, out, err = ran
    assert (code, err) == (0, b"")
    reply = json.loads(out)
    # (under /run/containerd/s when the tmp path is too long for a socket)
    assert reply["protocol"] == "ttrpc" and reply["address"].startswith("unix:///")
    server = int((bundle / "shim.pid").read_text())
    try:
        cmdline = Path(f"/proc/{server}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert cmdline == [w.encode() for w in argv[:-1]]  # the action word dropped
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(reply["address"].removeprefix("unix://"))
    finally:
        os.kill(server, signal.SIGKILL)

    code, out, err = zygote.run_start(path, [*argv[:-1], "bogus"], env, str(bundle), 10) or (
        0,
        b"",
        b"",
    )
    assert code == 2 and b"unknown shim command 'bogus'" in err
    os.unlink(path)
    _wait_gone(zpid)


def _spare_pids(path: str) -> list[int]:
    return _pids_shown_as(zygote.SPARE_CMDLINE, path)


def _wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Polls /proc-derived state (no event to wait on for another process's exec)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        select.select([], [], [], 0.02)


def _zygote_with_spare(root: Path) -> tuple[str, int, int]:
    """A zygote started for ``root``, once its spare is forked: (its socket path, its
    pid, the spare's pid)."""
    path = zygote.zygote_path(str(root))
    assert zygote._spawn(path)
    zpid = _zygote_pid(path)
    _wait_for(lambda: _spare_pids(path))
    (spare,) = _spare_pids(path)
    return path, zpid, spare


def test_spare_server_takes_the_next_socket(root: Path) -> None:
    """The zygote keeps one server forked ahead; a request gets it (same pid, now with
    the container's command line, serving the socket), and a new spare follows."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path, zpid, spare = _zygote_with_spare(root)
    assert harness.parent_pid(spare) == zpid
    # It prepares itself at the lowest priority, and gets the zygote's with a container.
    assert os.getpriority(os.PRIO_PROCESS, spare) == zygote.SPARE_PRIORITY
    bundle, request, pid = _ask_for_server(root)
    assert pid is not None
    try:
        assert pid == spare
        # (the zygote's own is ours; it is lowered only while it forks the next spare)
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert cmdline == [w.encode() for w in request.argv]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(bundle / "shim.sock"))
            conn.sendall(b"\0" * 10)  # a ttrpc frame header of nothing: the server reads it
        _wait_for(lambda: [p for p in _spare_pids(path) if p != spare])
    finally:
        os.kill(pid, signal.SIGKILL)
    (second,) = _spare_pids(path)
    os.unlink(path)
    _wait_gone(zpid)
    _wait_gone(second)  # the zygote's end of its socket closed: the spare leaves


def test_a_dead_spare_is_replaced_by_a_fork(root: Path) -> None:
    """A spare killed while it waits (the OOM killer, say) costs nothing but the fork
    it would have saved: the request gets a freshly forked server."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path, zpid, spare = _zygote_with_spare(root)
    os.kill(spare, signal.SIGKILL)
    _wait_for(lambda: spare not in _spare_pids(path))
    bundle, _, pid = _ask_for_server(root)
    assert pid is not None and pid != spare
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(bundle / "shim.sock"))
            conn.sendall(b"\0" * 10)
    finally:
        os.kill(pid, signal.SIGKILL)
    os.unlink(path)
    _wait_gone(zpid)


def test_pooled_containers_share_a_shim_up_to_the_bound(root: Path) -> None:
    """Ungrouped containers (``pool`` > 1) go to a running pooled shim, at its address,
    until it serves or has promised ``pool`` places; then a new one starts. A pooled
    shim that died is forgotten; a grouped container (pool 0) never joins a pool."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    bundle = root / "bundle"
    bundle.mkdir()

    def ask(cid: str, pool: int) -> tuple[int, str]:
        path = bundle / f"{cid}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(8)
        request = _request(bundle, PATH=os.environ.get("PATH", ""))
        request.flags.id, request.address, request.pool = cid, f"unix://{path}", pool
        try:
            served = zygote.fork_server(listener, request, str(root))
        finally:
            listener.close()
        assert served is not None
        pids.add(served[0])
        return served

    pids: set[int] = set()
    try:
        first = ask("c0", 3)
        assert first[1] == f"unix://{bundle}/c0.sock"
        assert [ask("c1", 3), ask("c2", 3)] == [first, first]
        second = ask("c3", 3)  # c0's shim has promised its three places
        assert second[0] != first[0] and second[1] == f"unix://{bundle}/c3.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(first[1].removeprefix("unix://"))  # still serving
        assert ask("g0", 0)[0] not in (first[0], second[0])

        os.kill(first[0], signal.SIGKILL)
        _wait_gone(first[0])
        assert ask("c4", 3) == second
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    path = zygote.zygote_path(str(root))
    zpid = _zygote_pid(path)
    os.unlink(path)
    _wait_gone(zpid)


def test_environment_is_adopted_by_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The activated spare's environment becomes the request's exactly."""
    monkeypatch.setattr(os, "environ", {"KEEP": "1", "CHANGE": "old", "DROP": "x"})
    zygote._adopt_environment({"KEEP": "1", "CHANGE": "new", "ADD": "a=b"})
    assert os.environ == {"KEEP": "1", "CHANGE": "new", "ADD": "a=b"}


def test_reserve_lines_round_trip_and_garbage_is_refused() -> None:
    line = zygote.reserve_line("c-1.x", 8)
    assert line.endswith(b"\n")
    assert zygote.parse_reserve(line[:-1]) == ("c-1.x", 8)
    for garbage in (b"", b"reserve", b"reserve c1", b"reserve c1 -1", b"reserve  8",
                    b"release c1 8", b"reserve c1 8 9", b"\xff\xfe 1 2"):  # fmt: skip
        assert zygote.parse_reserve(garbage) is None
