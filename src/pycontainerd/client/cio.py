"""Client-side process IO, as containerd's ``cio`` package does it.

A process's stdio reaches the shim as three strings in the create/exec request. For
plain IO they are FIFO paths that this client creates in a FIFO directory both it and
the shim can see, then copies to and from the caller's streams; a log URI
(``binary://``, ``file://``, ``fifo://``) goes as stdout and stderr unchanged and the shim
handles it. A *creator* makes the IO for one process id when the task or exec is made:

    task = await client.tasks.create(container, io=cio.stdio(stdout=buf))

FIFO open semantics: opening the read end blocks until the shim opens its write end,
and the copy ends at EOF, when the shim has closed it after the process exited. Copies
run in daemon threads because a read from a terminal cannot be interrupted, and must
not hold up the event loop's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pycontainerd.errdefs import InvalidArgument

# ctr's default; a daemon in another mount namespace must see the same directory.
DEFAULT_FIFO_DIR = "/run/containerd/fifo"
_CHUNK = 32 * 1024


class Reader(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class IOConfig:
    """What the create/exec request carries: stdio paths or URIs, and terminal mode."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


class ProcessIO:
    """The IO of one process: its config and, for FIFOs, the copies feeding them.

    ``wait()`` returns once stdout and stderr reached EOF; ``close()`` stops the copies
    and removes the FIFOs. A process's IO must be closed after the process is deleted.
    """

    def __init__(
        self,
        config: IOConfig,
        *,
        fifo_dir: Path | None = None,
        copies: Sequence[asyncio.Future[None]] = (),
        stdin_closer: Callable[[], None] | None = None,
        stdin_done: asyncio.Future[None] | None = None,
        cancellers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.config = config
        # Completes when the caller's stdin reached EOF and the FIFO was closed; the
        # task then asks the shim to close the process's stdin (CloseIO), as ctr does.
        self.stdin_done = stdin_done
        self._fifo_dir = fifo_dir
        self._copies = list(copies)
        self._stdin_closer = stdin_closer
        self._cancellers = list(cancellers)

    async def wait(self) -> None:
        """Until every output copy has reached EOF."""
        if self._copies:
            await asyncio.gather(*self._copies, return_exceptions=True)

    def close_stdin(self) -> None:
        """Stop feeding stdin: the process reads EOF."""
        if self._stdin_closer is not None:
            self._stdin_closer()
            self._stdin_closer = None

    def cancel(self) -> None:
        """Stop the copies without waiting for EOF (the process may still run)."""
        for cancel in self._cancellers:
            cancel()
        self._cancellers = []

    async def close(self) -> None:
        """Cancel the copies and remove the FIFO directory; safe to call twice."""
        self.cancel()
        self.close_stdin()
        if self._fifo_dir is not None:
            shutil.rmtree(self._fifo_dir, ignore_errors=True)
            self._fifo_dir = None


Creator = Callable[[str], Awaitable[ProcessIO]]
"""Makes the IO for a process id (the container id, or an exec id)."""


# -- FIFOs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FIFOSet:
    directory: Path
    config: IOConfig


def new_fifo_set(
    process_id: str,
    *,
    stdin: bool,
    terminal: bool,
    fifo_dir: str | os.PathLike[str] | None = None,
) -> FIFOSet:
    """FIFOs ``<id>-stdin`` (when asked for), ``<id>-stdout`` and (without a terminal)
    ``<id>-stderr`` in a new private directory under ``fifo_dir``."""
    root = Path(fifo_dir or DEFAULT_FIFO_DIR)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=root))
    wanted = {"stdin": stdin, "stdout": True, "stderr": not terminal}
    paths = {name: str(directory / f"{process_id}-{name}") for name, on in wanted.items() if on}
    for path in paths.values():
        os.mkfifo(path, 0o700)
    return FIFOSet(
        directory,
        IOConfig(
            paths.get("stdin", ""), paths.get("stdout", ""), paths.get("stderr", ""), terminal
        ),
    )


def _in_thread(fn: Callable[[], None], name: str) -> asyncio.Future[None]:
    """Run ``fn`` in a daemon thread; the future completes with it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)

    def body() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(settle, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=body, name=name, daemon=True).start()
    return future


class _FifoOpener:
    """A blocking FIFO open that another thread can cancel.

    Opening one end of a FIFO waits for the other. ``cancel`` ends such a wait by
    becoming the peer (``O_RDWR`` never blocks), held until the waiting open returns,
    so there is no window where the open starts just after the peer left.
    """

    def __init__(self, path: str, flags: int) -> None:
        self.path = path
        self.flags = flags
        self._lock = threading.Lock()
        self._state = "pending"  # -> opening -> done, or -> cancelled
        self._peer_fd: int | None = None

    def open(self) -> int | None:
        """The fd, or None when cancelled (or the FIFO was removed)."""
        with self._lock:
            if self._state == "cancelled":
                return None
            self._state = "opening"
        fd: int | None
        try:
            fd = os.open(self.path, self.flags)
        except FileNotFoundError:
            fd = None
        with self._lock:
            cancelled = self._state == "cancelled"
            self._state = "done"
            if self._peer_fd is not None:
                os.close(self._peer_fd)
                self._peer_fd = None
        if cancelled and fd is not None:
            os.close(fd)
            return None
        return fd

    def cancel(self) -> None:
        with self._lock:
            if self._state in ("done", "cancelled"):
                return
            opening = self._state == "opening"
            self._state = "cancelled"
            if opening:
                with contextlib.suppress(OSError):
                    self._peer_fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)


class _OutputCopy:
    """Copies one FIFO to a writer until EOF; ``cancel`` ends a pending open."""

    def __init__(self, path: str, out: Writer, *, existing: bool = False) -> None:
        self.out = out
        self.existing = existing
        self.cancelled = False
        # Attaching: the shim holds the write end while the process runs. Opening
        # without waiting, then reading blocking, gives EOF at once if it is gone.
        # Otherwise the open waits for the shim to open the write end.
        flags = os.O_RDONLY | (os.O_NONBLOCK if existing else 0)
        self._opener = _FifoOpener(path, flags)

    def run(self) -> None:
        fd = self._opener.open()
        if fd is None:
            return
        os.set_blocking(fd, True)
        try:
            while not self.cancelled:
                data = os.read(fd, _CHUNK)
                if not data:
                    return
                self.out.write(data)
                flush = getattr(self.out, "flush", None)
                if flush is not None:
                    flush()
        finally:
            os.close(fd)

    def cancel(self) -> None:
        self.cancelled = True
        self._opener.cancel()


class _InputCopy:
    """Copies a reader into the stdin FIFO; at the reader's EOF the FIFO is closed.

    The write end is opened blocking, so copying starts once the shim has opened the
    read end: data written and closed before that would be dropped with the pipe.
    """

    def __init__(self, path: str, source: Reader) -> None:
        self.source = source
        self.fd: int | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._opener = _FifoOpener(path, os.O_WRONLY)

    def run(self) -> None:
        fd = self._opener.open()
        if fd is None:
            return
        with self._lock:
            if self.closed:
                os.close(fd)
                return
            self.fd = fd
        fileno = _fileno(self.source)
        while True:
            data = os.read(fileno, _CHUNK) if fileno is not None else self.source.read(_CHUNK)
            if not data or not self._write(data):
                break
        self.close()

    def _write(self, data: bytes) -> bool:
        """False once the FIFO is closed, by us or by the reader going away."""
        with self._lock:
            if self.fd is None:
                return False
            try:
                os.write(self.fd, data)
            except BrokenPipeError:
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        self._opener.cancel()


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _fileno(stream: object) -> int | None:
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.BytesIO and friends have none
        return None
    return fd if isinstance(fd, int) else None


def attach_fifos(
    config: IOConfig,
    *,
    stdin: Reader | None = None,
    stdout: Writer | None = None,
    stderr: Writer | None = None,
    fifo_dir: Path | None = None,
    running: bool = False,
) -> ProcessIO:
    """Start copying between existing FIFOs and the caller's streams.

    Used both for a new process and, with ``running``, to attach to a running one
    (``tasks attach``), whose FIFO paths come from the daemon. A stream given as None is
    not copied.
    """
    copies: list[asyncio.Future[None]] = []
    cancellers: list[Callable[[], None]] = []
    closer = None
    stdin_done = None
    if config.stdin and stdin is not None:
        feed = _InputCopy(config.stdin, stdin)
        stdin_done = _in_thread(feed.run, "pycontainerd-stdin")  # may never end
        closer = feed.close
    for path, out in ((config.stdout, stdout), (config.stderr, stderr)):
        if path and out is not None:
            copy = _OutputCopy(path, out, existing=running)
            copies.append(_in_thread(copy.run, "pycontainerd-output"))
            cancellers.append(copy.cancel)
    return ProcessIO(
        config,
        fifo_dir=fifo_dir,
        copies=copies,
        stdin_closer=closer,
        stdin_done=stdin_done,
        cancellers=cancellers,
    )


def stdio(
    *,
    stdin: Reader | None = None,
    stdout: Writer | None = None,
    stderr: Writer | None = None,
    terminal: bool = False,
    fifo_dir: str | os.PathLike[str] | None = None,
) -> Creator:
    """IO copied to and from these streams through FIFOs (containerd's ``cio.NewCreator``).

    ``stdout``/``stderr`` take any object with ``write(bytes)`` (a binary file, a
    ``BytesIO``); ``stdin`` any with ``read(n)``. With ``terminal`` the process gets a pty
    and stderr is merged into stdout.
    """

    async def create(process_id: str) -> ProcessIO:
        fifos = new_fifo_set(
            process_id, stdin=stdin is not None, terminal=terminal, fifo_dir=fifo_dir
        )
        # runc shims want both output FIFOs and block opening one nobody reads: an
        # output without a stream is read and dropped.
        return attach_fifos(
            fifos.config,
            stdin=stdin,
            stdout=stdout or _Discard(),
            stderr=stderr or _Discard(),
            fifo_dir=fifos.directory,
        )

    return create


def null_io() -> Creator:
    """No IO at all: the shim sends the process's output to /dev/null."""

    async def create(process_id: str) -> ProcessIO:
        return ProcessIO(IOConfig())

    return create


def log_uri(uri: str) -> Creator:
    """stdout and stderr to a log URI the shim handles (``binary://``, ``file://``,
    ``fifo://``); a bare absolute path means ``file://`` (as ``ctr run --log-uri``).

    Raises (when the URI is built): InvalidArgument for a relative path or an unknown
    scheme.
    """
    parsed = urllib.parse.urlparse(uri)
    if not parsed.scheme:
        if not uri.startswith("/"):
            raise InvalidArgument(f"log uri {uri!r}: a path must be absolute")
        uri = "file://" + uri
    elif parsed.scheme not in ("binary", "file", "fifo"):
        raise InvalidArgument(f"log uri {uri!r}: scheme must be binary, file or fifo")

    async def create(process_id: str) -> ProcessIO:
        return ProcessIO(IOConfig("", uri, uri, False))

    return create


def log_file(path: str | os.PathLike[str]) -> Creator:
    """stdout and stderr appended to one file by the shim."""
    return log_uri("file://" + str(Path(path).absolute()))


def binary_io(binary: str, args: Mapping[str, str] | None = None) -> Creator:
    """stdout and stderr handed by the shim to a logging binary, with query args."""
    query = urllib.parse.urlencode(dict(args or {}))
    uri = "binary://" + str(Path(binary).absolute()) + (f"?{query}" if query else "")
    return log_uri(uri)


def is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _parse_uri_path(value: str) -> str | None:
    """The FIFO path of a stdio string, or None for a log URI."""
    if not value or "://" in value:
        return None
    return value


def attachable(config: IOConfig) -> IOConfig:
    """The part of a process's IO this client can attach to: FIFO paths only."""
    return IOConfig(
        _parse_uri_path(config.stdin) or "",
        _parse_uri_path(config.stdout) or "",
        _parse_uri_path(config.stderr) or "",
        config.terminal,
    )
