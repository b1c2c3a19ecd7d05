"""Terminals: runc's ``--console-socket`` hands us the pty master; the shim copies
stdin FIFO -> master and master -> stdout FIFO, and resizes it."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import termios

from pycontainerd.shim.reaper import wait_fd

_CHUNK = 32 * 1024


class ConsoleSocket:
    """A temporary unix socket runc connects to in order to send the pty master."""

    def __init__(self, directory: str, sock: socket.socket) -> None:
        self._directory = directory
        self._sock = sock
        self.path = os.path.join(directory, "pty.sock")

    @classmethod
    def create(cls) -> ConsoleSocket:
        directory = tempfile.mkdtemp(prefix="pty")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(directory, "pty.sock"))
        sock.listen(1)
        sock.setblocking(False)
        return cls(directory, sock)

    async def receive(self) -> int:
        """The master fd runc sends (one SCM_RIGHTS message). Raises OSError."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            while True:
                try:
                    _, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4))
                    break
                except BlockingIOError:
                    await wait_fd(conn.fileno())
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                return fds[0]
        raise OSError("runc sent no console file descriptor")

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._directory, ignore_errors=True)


class Console:
    """The pty master of a process and the copies to and from its FIFOs."""

    def __init__(self, master: int) -> None:
        self.master = master
        self._stdin = -1
        self._stdin_keeper = -1
        self._stdout = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._output: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, master: int, stdin_path: str, stdout_path: str) -> Console:
        console = cls(master)
        os.set_blocking(master, False)
        loop = asyncio.get_running_loop()
        if stdin_path:
            # Our own writer keeps the FIFO from reading EOF before the client opens it.
            console._stdin = os.open(stdin_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            console._stdin_keeper = os.open(stdin_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            console._tasks.append(loop.create_task(_copy(console._stdin, master)))
        if stdout_path:
            console._stdout = os.open(stdout_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            console._output = loop.create_task(_copy(master, console._stdout))
        return console

    def resize(self, width: int, height: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def wait_output(self) -> None:
        """Returns once everything the process wrote has been copied out."""
        if self._output is not None:
            await asyncio.shield(self._output)

    def close_stdin(self) -> None:
        if self._stdin_keeper >= 0:
            os.close(self._stdin_keeper)
            self._stdin_keeper = -1

    def close(self) -> None:
        for task in [*self._tasks, *([self._output] if self._output else [])]:
            task.cancel()
        self.close_stdin()
        for fd in (self._stdin, self._stdout, self.master):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._stdin = self._stdout = self.master = -1


async def _copy(source: int, target: int) -> None:
    """Copies until EOF (EIO on a master whose terminal is closed)."""
    while True:
        try:
            data = os.read(source, _CHUNK)
        except BlockingIOError:
            await wait_fd(source)
            continue
        except OSError:
            return
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(target, view) :]
            except BlockingIOError:
                await wait_fd(target, writable=True)
            except OSError:
                return
