"""A fork server for shim servers: one warm process per state root and code version.

Each shim server is a Python process; started cold it spends ~200 ms importing asyncio,
protobuf and the Task service and keeps ~15 MiB of private heap. The zygote imports all
of that once and freezes it (``gc.freeze``), then forks a shim server per ``start``: the
child starts serving within milliseconds and shares the imported modules' pages with the
zygote and every other shim, copy-on-write.

``start`` (a short-lived process) binds the shim socket itself, passes it over the
zygote's unix socket with ``SCM_RIGHTS`` together with its flags, environment and argv,
and gets the server's pid back. When there is no zygote it starts one (under a lock
file, so concurrent starts start one); when that fails it forks the server itself as
before. The zygote exits after ``IDLE_SECONDS`` without live shims, or at once when its
socket is removed. ``PYRUNC_SHIM_ZYGOTE=0`` turns it off.

Our daemon sends the ``start`` command line itself (``run_start``); the zygote runs it
in its own process. The zygote also keeps one server forked ahead of need (``_Spare``):
it has started its event loop, so the pages that costs are copied before a container
waits on them, and the next request's socket is handed to it.

This module's top level stays standard-library-light: ``start`` imports it.
"""

from __future__ import annotations

import errno
import os
import struct
import sys

# The start side uses the C socket module only: socket.py costs ~10 ms of imports.
from _socket import AF_UNIX, SCM_RIGHTS, SHUT_WR, SOCK_CLOEXEC, SOCK_STREAM, SOL_SOCKET
from _socket import socket as RawSocket

from pycontainerd.shim.address import Flags, sha256_hex

TYPE_CHECKING = False  # typing itself costs milliseconds to import
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Mapping

ZYGOTE_ENV = "PYRUNC_SHIM_ZYGOTE"
IDLE_SECONDS = 30.0
READY_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
MAGIC = b"pyrunc-zygote/1"
# The daemon's request: run the ``start`` command itself in a forked, warm child.
MAGIC_RUN = b"pyrunc-zygote-run/1"
# A forked server shows its own command line (ps, and the tests, find shims by it): the
# zygote is started with this much argv room for the children to write into.
ARGV_ROOM = 2048
MAX_REQUEST = 1 << 20
ZYGOTE_CMDLINE = ["containerd-shim-pyrunc-v2-zygote"]
# A pre-forked server waiting for its container shows this and the zygote's path.
SPARE_CMDLINE = "containerd-shim-pyrunc-v2-spare"
ACTIVATE_TIMEOUT = 2.0
SPARE_PRIORITY = 19  # the lowest: a spare prepares itself in idle time
_FLAG_FIELDS = ("namespace", "address", "publish_binary", "id", "bundle")
_LEN = struct.Struct("!I")


# -- the request, sans I/O ---------------------------------------------------------


class Request:
    """What a forked server needs from the ``start`` that asked for it; or, with
    ``run`` set, a shim command line for a forked child to run (``flags`` and
    ``address`` unused). ``pool`` > 1: the container may share a shim that serves
    fewer than ``pool`` containers."""

    __slots__ = ("address", "argv", "cwd", "env", "flags", "pool", "run")

    def __init__(
        self,
        flags: Flags,
        address: str,
        cwd: str,
        argv: list[str],
        env: dict[str, str],
        run: bool = False,
        pool: int = 0,
    ) -> None:
        self.flags = flags
        self.address = address
        self.cwd = cwd
        self.argv = argv
        self.env = env
        self.run = run
        self.pool = pool


_HEAD_WORDS = 5  # magic, address, cwd, debug, pool


def encode_request(request: Request) -> bytes:
    """Length-prefixed, NUL-separated words: none of them can hold a NUL (they come
    from argv and the environment)."""
    flags = request.flags
    magic = MAGIC_RUN if request.run else MAGIC
    words = [magic.decode(), request.address, request.cwd, "1" if flags.debug else ""]
    words.append(str(request.pool))
    words += [getattr(flags, name) for name in _FLAG_FIELDS]
    words += [str(len(request.argv)), *request.argv]
    words += [f"{key}={value}" for key, value in request.env.items()]
    payload = "\0".join(words).encode("utf-8", "surrogateescape")
    return _LEN.pack(len(payload)) + payload


def decode_request(payload: bytes) -> Request:
    """Raises ValueError on anything but a well-formed request."""
    words = payload.decode("utf-8", "surrogateescape").split("\0")
    run = words[0] == MAGIC_RUN.decode()
    if len(words) < _HEAD_WORDS + len(_FLAG_FIELDS) + 1 or not (
        run or words[0] == MAGIC.decode()
    ):
        raise ValueError("not a zygote request")
    address, cwd, debug, pool = words[1:_HEAD_WORDS]
    if not pool.isdigit():
        raise ValueError("bad pool size")
    flag_values = words[_HEAD_WORDS : _HEAD_WORDS + len(_FLAG_FIELDS)]
    rest = words[_HEAD_WORDS + len(_FLAG_FIELDS) :]
    if not rest[0].isdigit() or int(rest[0]) > len(rest) - 1:
        raise ValueError("bad argv count")
    argc = int(rest[0])
    argv, env_words = rest[1 : 1 + argc], rest[1 + argc :]
    env = {}
    for word in env_words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ValueError(f"bad environment entry {word!r}")
        env[key] = value
    flags = Flags(**dict(zip(_FLAG_FIELDS, flag_values, strict=True)), debug=debug == "1")
    if not (address or run) or not os.path.isabs(cwd):
        raise ValueError("request needs an address and an absolute directory")
    if run and not argv:
        raise ValueError("nothing to run")
    return Request(flags, address, cwd, argv, env, run, int(pool))


# The pool channel, between the zygote and a pooled shim: a question per line, which
# the shim answers with POOL_PLACED (it promises the container a place) or POOL_FULL.
POOL_PLACED = b"ok\n"
POOL_FULL = b"full\n"
MAX_POOL_LINE = 4096


def reserve_line(container_id: str, limit: int) -> bytes:
    return f"reserve {container_id} {limit}\n".encode()


def parse_reserve(line: bytes) -> tuple[str, int] | None:
    """(container id, limit) of a reserve line without its newline; None if it is not
    one. (Container ids hold no spaces: containerd's identifiers are [A-Za-z0-9._-].)"""
    words = line.decode(errors="replace").split(" ")
    if len(words) != 3 or words[0] != "reserve" or not words[1] or not words[2].isdigit():
        return None
    return words[1], int(words[2])


# -- the ``start`` side -------------------------------------------------------------


def enabled() -> bool:
    return os.environ.get(ZYGOTE_ENV, "1") != "0"


def zygote_path(root: str) -> str:
    """The zygote's socket in the shim socket directory, named for this interpreter
    and code, so an upgraded shim never runs old code in a lingering zygote."""
    if not _CODE_TAG:
        _CODE_TAG.append(sha256_hex(_code_stamp().encode())[:16])
    return os.path.join(root, "s", f"z-{_CODE_TAG[0]}")


# Computed once per process: the daemon asks for it on every container start.
_CODE_TAG: list[str] = []


def _code_stamp() -> str:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [sys.executable, package]
    for sub in ("shim", "ttrpc", "sansio"):
        try:
            entries = sorted(os.scandir(os.path.join(package, sub)), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".py"):
                parts.append(f"{entry.name}:{entry.stat().st_mtime_ns}")
    return "\n".join(parts)


def fork_server(listener: RawSocket, request: Request, root: str) -> tuple[int, str] | None:
    """Asks the zygote of ``root`` (starting it if needed) to serve ``listener``: the
    server's pid and address (a pooled shim's, see ``Request.pool``), or None when no
    zygote can do it."""
    path = zygote_path(root)
    try:
        return _ask(path, listener, request)
    except OSError:
        pass
    import fcntl

    try:
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _ask(path, listener, request)  # another start made one meanwhile
        except OSError:
            pass
        if not _spawn(path):
            return None
        try:
            return _ask(path, listener, request)
        except OSError:
            return None
    finally:
        os.close(lock)


def _ask(path: str, listener: RawSocket, request: Request) -> tuple[int, str]:
    conn = RawSocket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        conn.connect(path)
        data = encode_request(request)
        rights = [(SOL_SOCKET, SCM_RIGHTS, struct.pack("i", listener.fileno()))]
        sent = conn.sendmsg([data], rights)
        if sent < len(data):
            conn.sendall(data[sent:])
        conn.shutdown(SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    finally:
        conn.close()
    status, _, detail = reply.decode(errors="replace").partition(" ")
    pid, _, address = detail.partition(" ")
    if status == "ok" and pid.isdigit() and address:
        return int(pid), address
    raise OSError(errno.EPROTO, f"zygote refused: {detail or reply!r}")


def run_start(
    path: str, argv: list[str], env: dict[str, str], cwd: str, timeout: float
) -> tuple[int, bytes, bytes] | None:
    """Runs the shim command ``argv`` (``start``) in a child forked by the zygote at
    ``path``, as if executed with ``env`` in ``cwd``: (exit status, stdout, stderr).
    None when there is no zygote to ask. Blocking; raises TimeoutError.

    The daemon uses this for our own shim: the command then costs a fork, not an
    interpreter start."""
    import select
    import time

    conn = RawSocket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
    pipes: list[int] = []
    try:
        try:
            conn.connect(path)
        except OSError:
            return None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pipes = [out_r, out_w, err_r, err_w]
        request = Request(Flags(), "", cwd, argv, env, run=True)
        data = encode_request(request)
        rights = [(SOL_SOCKET, SCM_RIGHTS, struct.pack("2i", out_w, err_w))]
        sent = conn.sendmsg([data], rights)
        if sent < len(data):
            conn.sendall(data[sent:])
        conn.shutdown(SHUT_WR)
        for fd in (out_w, err_w):
            os.close(fd)
            pipes.remove(fd)
        outputs: dict[int, bytearray] = {
            conn.fileno(): bytearray(),
            out_r: bytearray(),
            err_r: bytearray(),
        }
        open_fds = list(outputs)
        deadline = time.monotonic() + timeout
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"shim command did not finish within {timeout:g}s")
            readable, _, _ = select.select(open_fds, [], [], left)
            for fd in readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    outputs[fd] += chunk
                else:
                    open_fds.remove(fd)
        status, _, detail = outputs[conn.fileno()].decode(errors="replace").partition(" ")
        if status == "error":
            return None  # the zygote could not run it: the caller executes the binary
        out, err = bytes(outputs[out_r]), bytes(outputs[err_r])
        if status != "exit" or not detail.lstrip("-").isdigit():
            return 1, out, err + b"\nshim command ended without an exit status"
        return int(detail), out, err
    finally:
        conn.close()
        for fd in pipes:
            os.close(fd)


def _spawn(path: str) -> bool:
    """Starts a zygote serving ``path`` and waits until it listens."""
    import select

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.set_inheritable(ready_w, True)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.chdir("/")
            argv = [sys.executable, "-m", "pycontainerd.shim.zygote", path, str(ready_w)]
            os.execv(sys.executable, [*argv, " " * ARGV_ROOM])
        finally:
            os._exit(127)
    os.close(ready_w)
    try:
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        return bool(readable) and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
        # The zygote is our child until we exit; reap it now if it already failed.
        try:  # noqa: SIM105 (contextlib is too dear an import for ``start``)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


# -- the zygote ---------------------------------------------------------------------


def _preload() -> None:
    """Imports everything a shim server imports, lazily or not, before any fork."""
    # asyncio imports ssl only if it can; the shim speaks ttrpc over unix sockets, and
    # OpenSSL's initialisation costs about 1 MiB per process.
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
    import asyncio.unix_events  # noqa: F401
    import json  # noqa: F401
    import logging  # noqa: F401
    import traceback  # noqa: F401

    import google.protobuf.empty_pb2  # noqa: F401

    import pycontainerd.shim.console
    import pycontainerd.shim.metrics
    import pycontainerd.shim.server
    import pycontainerd.snapshots.interface
    import pycontainerd.snapshots.mount
    import pycontainerd.ttrpc
    import pycontainerd.typeurl

    pycontainerd.snapshots.mount._Libc.get()  # the rootfs mounts' libc bindings
    _warm_up()


def _warm_up() -> None:
    """Builds what the servers would each build lazily on first use (protobuf's
    per-type parsing tables, an event loop's internals), so it is shared too."""
    import asyncio

    from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

    from pycontainerd._api.containerd.events import task_pb2 as events
    from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
    from pycontainerd._api.containerd.types.runc.options import oci_pb2

    for module in (shim_pb2, events, oci_pb2, any_pb2, empty_pb2, timestamp_pb2):
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            cls = getattr(module, descriptor.name)
            cls.FromString(cls().SerializeToString())

    async def tick() -> None:
        await asyncio.sleep(0)

    asyncio.run(tick())


def serve_zygote(path: str, ready_fd: int) -> int:
    import gc
    import time

    _preload()
    _set_cmdline([*ZYGOTE_CMDLINE, path])
    try:
        sock = _bind(path)
    except OSError:
        os.write(ready_fd, b"0")
        return 1
    if sock is None:  # a live zygote has it
        os.write(ready_fd, b"1")
        return 0
    identity = os.stat(path).st_ino
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    gc.freeze()  # the children's collections then leave the shared pages alone
    sock.settimeout(1.0)
    children: set[int] = set()
    idle_since = time.monotonic()
    global _spare
    try:
        while True:
            if _spare is None:
                _spare = _Spare.fork(path, sock)
            if _reap(children) and not children:
                idle_since = time.monotonic()
            if not children and time.monotonic() - idle_since > IDLE_SECONDS:
                break
            try:
                if os.stat(path).st_ino != identity:
                    return 0  # replaced: it is not ours to remove
            except OSError:
                return 0
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                _handle(conn, sock, path, children)
            idle_since = time.monotonic()
    finally:
        if _spare is not None:
            _spare.close()
            _spare = None
        _pools.close()
    os.unlink(path)
    return 0


def _bind(path: str) -> socket.socket | None:
    import socket

    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)  # the socket is for root (the daemon's uid) only
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                sock.close()
                return None
            except OSError:
                os.unlink(path)
                sock.bind(path)
            finally:
                probe.close()
    finally:
        os.umask(old_umask)
    sock.listen(64)
    return sock


def _reap(children: set[int]) -> bool:
    """Collects exited children (a spare that died too); True if a server was one."""
    reaped = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            reaped = bool(children)
            children.clear()
            return reaped
        if pid == 0:
            return reaped
        _pools.forget(pid)
        if pid in children:
            children.discard(pid)
            reaped = True


def _handle(conn: socket.socket, sock: socket.socket, path: str, children: set[int]) -> None:
    import socket

    fds: list[int] = []
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.geteuid():
            raise ValueError(f"uid {uid} may not start shims")
        data, fds, _, _ = socket.recv_fds(conn, 4096, 2)
        while len(data) < _LEN.size or len(data) < _LEN.size + _LEN.unpack_from(data)[0]:
            if len(data) > MAX_REQUEST:
                raise ValueError("request too large")
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("truncated request")
            data += chunk
        request = decode_request(data[_LEN.size :])
        if request.run:
            if len(fds) != 2:
                raise ValueError("a run request carries its stdout and stderr")
            stdio = list(fds)
            if _start_here(request, stdio, conn, sock, path, children):
                return
            # Another command: run in a child, with the command line Go shims show.
            cmdline = [word for word in request.argv if word != "start"]
            children.add(_fork_as(cmdline, path, sock, lambda: _run_command(request, stdio, conn)))
            return
        if len(fds) != 1:
            raise ValueError("request carries no listening socket")
        pid, address = _server_for(fds[0], request, path, sock, [conn.fileno()])
        children.add(pid)
        conn.sendall(f"ok {pid} {address}".encode())
    except (OSError, ValueError) as exc:
        import contextlib

        with contextlib.suppress(OSError):
            conn.sendall(f"error {exc}".encode())
    finally:
        for fd in fds:
            os.close(fd)


def _server_for(
    listener_fd: int, request: Request, path: str, sock: socket.socket, close_in_child: list[int]
) -> tuple[int, str]:
    """The pid and address of a server for ``request``: a pooled one with room, or on
    ``listener_fd`` the waiting spare when it takes it, else a child forked now (which
    closes ``close_in_child`` first)."""
    global _spare
    if request.pool > 1:
        placed = _pools.place(request)
        if placed is not None:
            return placed
    spare, _spare = _spare, None
    if spare is not None and spare.activate(listener_fd, request):
        _pools.add(request, spare.pid, spare.control)
        return spare.pid, request.address
    import socket

    ours = theirs = None
    if request.pool > 1:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    def serve() -> None:
        for fd in close_in_child:
            os.close(fd)
        if ours is not None:
            ours.close()
        _become_server(listener_fd, request, None if theirs is None else theirs.detach())

    try:
        pid = _fork_as(request.argv, path, sock, serve)
    finally:
        if theirs is not None:
            theirs.close()
    if ours is not None:
        _pools.add(request, pid, ours)
    return pid, request.address


class _Pools:
    """Shims that serve ungrouped containers, by what they must have in common: each
    is asked over its socket pair (``server.serve_pool_channel``) to promise a place."""

    ANSWER_TIMEOUT = 1.0

    def __init__(self) -> None:
        self._shims: dict[tuple[str, ...], list[tuple[int, socket.socket, str]]] = {}

    @staticmethod
    def _key(request: Request) -> tuple[str, ...]:
        flags = request.flags
        return (
            flags.namespace,
            flags.address,
            flags.publish_binary,
            "debug" if flags.debug else "",
            request.env.get("TTRPC_ADDRESS", ""),
            request.env.get("MAX_SHIM_VERSION", ""),
        )

    def add(self, request: Request, pid: int, channel: socket.socket | None) -> None:
        if request.pool > 1 and channel is not None:
            self._shims.setdefault(self._key(request), []).append(
                (pid, channel, request.address)
            )
        elif channel is not None:
            channel.close()

    def place(self, request: Request) -> tuple[int, str] | None:
        """A pooled shim that promised ``request``'s container a place: (pid, address)."""
        shims = self._shims.get(self._key(request), [])
        line = reserve_line(request.flags.id, request.pool)
        for shim in reversed(list(shims)):  # the newest is the likeliest to have room
            pid, channel, address = shim
            try:
                channel.settimeout(self.ANSWER_TIMEOUT)
                channel.sendall(line)
                answer = b""
                while not answer.endswith(b"\n") and len(answer) < 16:
                    chunk = channel.recv(16)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                answer = b""
            if answer == POOL_PLACED:
                return pid, address
            if answer != POOL_FULL:  # gone, or too slow to keep in step with
                shims.remove(shim)
                channel.close()
        return None

    def forget(self, pid: int) -> None:
        for shims in self._shims.values():
            for shim in [s for s in shims if s[0] == pid]:
                shims.remove(shim)
                shim[1].close()

    def close(self) -> None:
        for shims in self._shims.values():
            for _, channel, _ in shims:
                channel.close()
        self._shims.clear()


_pools = _Pools()


class _Spare:
    """A server forked ahead of need: its event loop runs and the pages it writes on
    the way are already copied, so a container's shim starts serving at once. It
    waits on its end of a socket pair for the listening socket and the request."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control

    @classmethod
    def fork(cls, path: str, sock: socket.socket) -> _Spare | None:
        import socket

        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return None

        # A spare is forked while a container starts: the fork (page tables) and the
        # spare's preparation take only CPU time that nothing else wants. The spare
        # takes the zygote's priority back once it has a container (root may raise it).
        priority = os.getpriority(os.PRIO_PROCESS, 0)
        lowered = os.geteuid() == 0 and _set_priority(SPARE_PRIORITY)
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid != 0 and lowered:  # the zygote's own priority, back at once
            _set_priority(priority)
        if pid < 0:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            try:
                # Set here, not around the fork as for servers: the zygote keeps its
                # own command line (it is looked up by it) while it forks spares.
                _set_cmdline([SPARE_CMDLINE, path])
                sock.close()
                ours.close()
                _pools.close()
                _spare_main(theirs, priority if lowered else None)
            finally:
                os._exit(1)
        theirs.close()
        ours.set_inheritable(False)
        return cls(pid, ours)

    def activate(self, listener_fd: int, request: Request) -> bool:
        """Hands over the socket and request; True once the spare has taken them (the
        socket pair then stays open: it becomes a pooled shim's channel)."""
        import socket

        try:
            self.control.settimeout(ACTIVATE_TIMEOUT)
            data = encode_request(request)
            sent = socket.send_fds(self.control, [data], [listener_fd])
            if sent < len(data):
                self.control.sendall(data[sent:])
            taken = self.control.recv(16) == b"ok"
        except OSError:
            taken = False
        if not taken:
            self.control.close()
            import contextlib
            import signal

            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        return taken

    def close(self) -> None:
        """The spare sees the end of its socket and exits."""
        self.control.close()


_spare: _Spare | None = None


def _spare_main(control: socket.socket, priority: int | None) -> None:
    """The spare's life: prepare what every server needs, wait, then serve (at
    ``priority``, when not None)."""
    import asyncio
    import traceback

    from pycontainerd.shim.reaper import set_subreaper

    code = 1
    try:
        os.setsid()
        set_subreaper()
        code = asyncio.run(_spare_serve(control, priority))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


async def _spare_serve(control: socket.socket, priority: int | None) -> int:
    import asyncio
    import socket

    from pycontainerd.shim.main import redirect_stdio
    from pycontainerd.shim.reaper import Reaper, wait_fd
    from pycontainerd.shim.server import ShimServer

    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    shim = ShimServer(reaper)
    control.setblocking(False)
    data, fds = b"", []
    while len(data) < _LEN.size or len(data) < _LEN.size + _LEN.unpack_from(data)[0]:
        try:
            chunk, got, _, _ = socket.recv_fds(control, 65536, 1)
        except BlockingIOError:
            await wait_fd(control.fileno())
            continue
        fds += got
        if not chunk or len(data) > MAX_REQUEST:
            return 0  # the zygote is gone (or speaks nonsense): nothing to serve
        data += chunk
    request = decode_request(data[_LEN.size :])
    if len(fds) != 1:
        return 1
    if priority is not None:
        _set_priority(priority)
    _adopt_environment(request.env)
    os.chdir(request.cwd)
    _set_cmdline(request.argv)
    redirect_stdio(request.flags.bundle or request.cwd)
    control.setblocking(True)
    control.sendall(b"ok")
    if request.pool <= 1:
        control.close()
    listener = socket.socket(fileno=fds[0])
    channel = control if request.pool > 1 else None
    await shim.serve(listener, request.flags, request.address, channel)
    return 0


def _set_priority(niceness: int) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        return False
    return True


def _adopt_environment(env: Mapping[str, str]) -> None:
    """Makes ``env`` this process's environment, changing only what differs: each
    change is a putenv, and the zygote's environment is mostly the request's."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _fork_as(cmdline: list[str], path: str, sock: socket.socket, child: Callable[[], None]) -> int:
    """Forks a child that closes the zygote's socket ``sock`` and runs ``child`` (which
    must not return), born with ``cmdline`` as its command line: ours is set to it
    around the fork."""
    _set_cmdline(cmdline)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                _pools.close()  # the zygote's ends: a pooled shim must see it hang up
                child()
            finally:
                os._exit(1)
    finally:
        _set_cmdline([*ZYGOTE_CMDLINE, path])
    return pid


def _start_here(
    request: Request,
    stdio: list[int],
    conn: socket.socket,
    sock: socket.socket,
    path: str,
    children: set[int],
) -> bool:
    """Runs a ``start`` command in the zygote itself (no child to fork and wait for,
    and the server is forked straight from here); False for any other command."""
    import contextlib

    from pycontainerd.shim import main as shim_main
    from pycontainerd.shim.address import parse_flags

    try:
        flags = parse_flags(request.argv[1:])
    except ValueError:
        return False
    if flags.action != "start":
        return False
    if not flags.namespace:
        flags.namespace = request.env.get("NAMESPACE", "")
    if not flags.namespace:
        return False  # the command's own error message, from a child

    def spawn(
        listener: RawSocket,
        flags: Flags,
        bundle: str,
        address: str,
        cmdline: list[str],
        env: Mapping[str, str],
        pool: int,
    ) -> tuple[int, str]:
        server = Request(flags, address, bundle, cmdline, dict(env), pool=pool)
        # The daemon reads the command's output until every copy is closed.
        pid, served = _server_for(listener.fileno(), server, path, sock, [conn.fileno(), *stdio])
        children.add(pid)
        return pid, served

    try:
        code, out, err = shim_main.start_shim(flags, request.argv, request.env, request.cwd, spawn)
    except Exception as exc:
        code, out, err = 1, "", f"start: {exc}"
    for fd, text in ((stdio[0], out), (stdio[1], err)):
        if text:
            with contextlib.suppress(OSError):
                os.write(fd, text.encode())
    conn.sendall(b"exit %d" % code)
    return True


def _run_command(request: Request, stdio: list[int], conn: socket.socket) -> None:
    code = 1
    try:
        _adopt_environment(request.env)
        os.chdir(request.cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdio[0], 1)
        os.dup2(stdio[1], 2)
        for fd in (null, *stdio):
            os.close(fd)
        from pycontainerd.shim import main as shim_main

        # The server is still forked by the zygote (this child's own dirty pages would
        # otherwise become the server's); should that fail, one forked here must not
        # hold the connection the daemon waits on.
        shim_main.CLOSE_IN_SERVER.append(conn.fileno())
        sys.argv = list(request.argv)
        try:
            shim_main.main(request.argv[1:])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            conn.sendall(b"exit %d" % code)
        finally:
            os._exit(0)


def _become_server(listener_fd: int, request: Request, pool_fd: int | None) -> None:
    from pycontainerd.shim.main import become_server

    try:
        _adopt_environment(request.env)
        os.chdir(request.cwd)
    except BaseException:
        os._exit(1)
    bundle = request.flags.bundle or request.cwd
    become_server(listener_fd, request.flags, bundle, request.address, pool_fd)


def _set_cmdline(argv: list[str]) -> None:
    """Rewrites this process's command line in place (its original argv area, which
    CPython no longer reads); words that do not fit are cut."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        room = end - start
        raw = b"\0".join(os.fsencode(word) for word in argv)[: room - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(raw.ljust(room, b"\0"))
    except (OSError, ValueError, IndexError):
        pass  # cosmetic: the old command line stays


if __name__ == "__main__":
    sys.exit(serve_zygote(sys.argv[1], int(sys.argv[2])))
