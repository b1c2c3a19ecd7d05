"""A process's stdio as the client asked for it: FIFO paths (what ctr creates),
``file://`` (append stdout and stderr), ``binary://`` (a logging program), or nothing.

The container gets the file descriptors directly, so no byte passes through the shim.
Stdout/stderr FIFOs are opened read-write so that the container never gets EPIPE when
the client goes away (containerd keeps a reader open for the same reason). For stdin the
shim holds a writer until CloseIO, so the container does not read EOF before the
client has even opened its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from pycontainerd import errdefs
from pycontainerd.shim.reaper import Reaper, wait_fd

BINARY_READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class StdioTarget:
    """Where one stream goes: ``kind`` is ``fifo``, ``file``, ``binary`` or ``null``."""

    kind: str
    path: str = ""
    args: tuple[str, ...] = ()


def parse_target(uri: str) -> StdioTarget:
    """Parses a CreateTaskRequest stdio string. Raises InvalidArgument."""
    if not uri:
        return StdioTarget("null")
    if "://" not in uri:
        return StdioTarget("fifo", uri)
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.scheme == "fifo":
        return StdioTarget("fifo", unquote(parts.netloc) + path)
    if parts.scheme == "file":
        return StdioTarget("file", path)
    if parts.scheme == "binary":
        args: list[str] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            args.append(key)
            if value:
                args.append(value)
        return StdioTarget("binary", path, tuple(args))
    raise errdefs.InvalidArgument(f"unsupported STDIO scheme {parts.scheme}")


@dataclass
class ProcessIO:
    """The descriptors a process is started with, and what the shim keeps."""

    stdin: int
    stdout: int
    stderr: int
    # Closed once runc has handed the descriptors to the container.
    _child_fds: list[int] = field(default_factory=list)
    _stdin_keeper: int = -1
    _logger_pid: int = 0

    @property
    def stdio(self) -> tuple[int, int, int]:
        return (self.stdin, self.stdout, self.stderr)

    def release_child_fds(self) -> None:
        for fd in set(self._child_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._child_fds.clear()

    def close_stdin(self) -> None:
        if self._stdin_keeper >= 0:
            with contextlib.suppress(OSError):
                os.close(self._stdin_keeper)
            self._stdin_keeper = -1

    def close(self) -> None:
        self.release_child_fds()
        self.close_stdin()


def _devnull(flags: int, io: ProcessIO) -> int:
    fd = os.open(os.devnull, flags | os.O_CLOEXEC)
    io._child_fds.append(fd)
    return fd


async def open_io(
    stdin: str, stdout: str, stderr: str, *, namespace: str, container_id: str, reaper: Reaper
) -> ProcessIO:
    """Opens the non-terminal stdio of a process. Raises InvalidArgument or OSError."""
    io = ProcessIO(-1, -1, -1)
    try:
        await _open_into(io, stdin, stdout, stderr, namespace, container_id, reaper)
    except BaseException:
        io.close()
        raise
    return io


async def _open_into(
    io: ProcessIO,
    stdin: str,
    stdout: str,
    stderr: str,
    namespace: str,
    container_id: str,
    reaper: Reaper,
) -> None:
    if stdin:
        io.stdin = os.open(stdin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        io._child_fds.append(io.stdin)
        io._stdin_keeper = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(io.stdin, True)
    else:
        io.stdin = _devnull(os.O_RDONLY, io)
    out = parse_target(stdout)
    if out.kind == "file":
        Path(out.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        io._child_fds.append(fd)
        io.stdout = io.stderr = fd
        return
    if out.kind == "binary":
        await _start_logger(io, out, namespace, container_id, reaper)
        return
    io.stdout = _open_output(stdout, io)
    io.stderr = _open_output(stderr, io)


def _open_output(uri: str, io: ProcessIO) -> int:
    target = parse_target(uri)
    if target.kind == "null":
        return _devnull(os.O_WRONLY, io)
    if target.kind != "fifo":
        raise errdefs.InvalidArgument(f"stderr must be a FIFO when stdout is: {uri}")
    fd = os.open(target.path, os.O_RDWR | os.O_CLOEXEC)
    io._child_fds.append(fd)
    return fd


async def _start_logger(
    io: ProcessIO, target: StdioTarget, namespace: str, container_id: str, reaper: Reaper
) -> None:
    """Starts a ``binary://`` logger as containerd does: the container's stdout and
    stderr pipes are its fds 3 and 4, and it closes fd 5 once it is ready."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    io._child_fds += [out_w, err_w]
    io.stdout, io.stderr = out_w, err_w
    env = dict(os.environ, CONTAINER_ID=container_id, CONTAINER_NAMESPACE=namespace)
    # Copies above 5 first, so that dup2 onto 3, 4, 5 never clobbers a source.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (out_r, err_r, ready_w)]
    try:
        pid = os.posix_spawn(
            target.path,
            [target.path, *target.args],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                *[(os.POSIX_SPAWN_DUP2, fd, n) for fd, n in zip(high, (3, 4, 5), strict=True)],
            ],
        )
    except OSError as exc:
        raise errdefs.Unknown(f"start logging binary {target.path}: {exc.strerror}") from exc
    finally:
        for fd in (out_r, err_r, ready_w, *high):
            os.close(fd)
    io._logger_pid = pid
    exited = reaper.wait(pid)
    try:
        async with asyncio.timeout(BINARY_READY_TIMEOUT):
            await _wait_readable_eof(ready_r)
    except TimeoutError as exc:
        raise errdefs.Unknown(f"logging binary {target.path} did not become ready") from exc
    finally:
        os.close(ready_r)
    if exited.done() and exited.result() != 0:
        raise errdefs.Unknown(f"logging binary {target.path} exited with {exited.result()}")


async def _wait_readable_eof(fd: int) -> None:
    os.set_blocking(fd, False)
    while True:
        try:
            if not os.read(fd, 64):
                return
        except BlockingIOError:
            await wait_fd(fd)
