"""Reaping children as a subreaper: one SIGCHLD handler owns every ``waitpid``.

The shim is PR_SET_CHILD_SUBREAPER, so container processes are re-parented to it when
runc exits; runc's own commands are its children too. Nothing else may wait: asyncio's
child watchers would steal exits, so commands are spawned with ``subprocess.Popen`` and
their exit is awaited here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence

_PR_SET_CHILD_SUBREAPER = 36
# Exits of processes nobody waits for yet (a container init that died before runc's
# pid file was read); bounded because orphans of containers land here too.
_MAX_UNCLAIMED = 1024


def exit_code(status: int) -> int:
    """A wait status as containerd reports it: the exit code, or 128 + signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def set_subreaper() -> None:
    """Makes orphaned descendants (container processes) our children. Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Reaper:
    """Collects every child's exit and hands it to whoever waits for that pid."""

    def __init__(self) -> None:
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._unclaimed: dict[int, int] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def reap(self) -> None:
        """Waits for every exited child without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._deliver(pid, exit_code(status))

    def _deliver(self, pid: int, code: int) -> None:
        waiters = self._waiters.pop(pid, None)
        if not waiters:
            self._unclaimed[pid] = code
            while len(self._unclaimed) > _MAX_UNCLAIMED:
                del self._unclaimed[next(iter(self._unclaimed))]
            return
        for fut in waiters:
            if not fut.done():
                fut.set_result(code)

    def wait(self, pid: int) -> asyncio.Future[int]:
        """A future of ``pid``'s exit code; already done if it exited before."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if pid in self._unclaimed:
            fut.set_result(self._unclaimed.pop(pid))
        else:
            self._waiters.setdefault(pid, []).append(fut)
        return fut

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.DEVNULL,
        input_bytes: bytes | None = None,
    ) -> tuple[int, bytes]:
        """Runs ``argv`` (never a shell) and returns its exit code and, with
        ``stdout=subprocess.PIPE``, what it printed. Raises OSError if it cannot start."""
        read_fd = write_fd = -1
        if stdout == subprocess.PIPE:
            read_fd, write_fd = os.pipe()
            stdout = write_fd
        in_read = in_write = -1
        if input_bytes is not None:
            in_read, in_write = os.pipe()
            stdin = in_read
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                close_fds=True,
            )
            exited = self.wait(proc.pid)
        finally:
            for fd in (write_fd, in_read):
                if fd >= 0:
                    os.close(fd)
        try:
            if in_write >= 0:
                # A command that exits without reading its input is judged by its status.
                with contextlib.suppress(BrokenPipeError):
                    await _write_all(in_write, input_bytes or b"")
                os.close(in_write)
                in_write = -1
            output = await _read_all(read_fd) if read_fd >= 0 else b""
            code = await exited
        finally:
            for fd in (read_fd, in_write):
                if fd >= 0:
                    os.close(fd)
        proc.returncode = code  # so Popen never waits for it
        return code, output


async def wait_fd(fd: int, *, writable: bool = False) -> None:
    """Returns once ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await wait_fd(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def _write_all(fd: int, data: bytes) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_fd(fd, writable=True)
