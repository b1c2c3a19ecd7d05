"""The daemon's handle on one running shim (containerd's runtime/v2/shim.go, process.go).

A ``ShimTask`` is a ttrpc client to the shim's ``containerd.task.v2.Task`` service,
scoped to one task id. When the ttrpc connection closes without the daemon asking for
it, the shim is dead: the ``on_lost`` callback (the manager's clean-up) runs once.

Errors from the shim arrive as errdefs kinds. A lost connection (``Unavailable``)
during a state query is reported as ``NotFound``, as containerd does, so listings skip
a task whose shim just went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Mapping
from typing import TypeVar

from google.protobuf import any_pb2, empty_pb2, message, timestamp_pb2

from pycontainerd import identifiers
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd._api.containerd.types.task import task_pb2
from pycontainerd.errdefs import InvalidArgument, NotFound, Unavailable
from pycontainerd.namespaces import TTRPC_HEADER
from pycontainerd.runtime import IO, CreateOpts, Exit
from pycontainerd.runtime.v2.binary import ShimBinary
from pycontainerd.runtime.v2.bundle import Bundle
from pycontainerd.ttrpc.client import Client

logger = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
LOAD_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 3.0
STATE_TIMEOUT = 2.0

M = TypeVar("M", bound=message.Message)


class ShimLog:
    """Reads the ``log`` fifo in the bundle (the shim's stderr) into our log.

    The fifo is opened read-write and non-blocking, so opening never waits for the
    shim and a shim writing to it never blocks because nobody reads.
    """

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self._fd: int | None = None
        self._partial = b""

    def open(self) -> None:
        """Create (if needed) and start reading the fifo. Must run on the event loop.

        Raises:
            OSError: the fifo cannot be made or opened.
        """
        path = self._bundle.log_fifo
        try:
            os.mkfifo(path, 0o700)
        except FileExistsError:
            if not stat.S_ISFIFO(path.lstat().st_mode):
                raise
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        asyncio.get_running_loop().add_reader(self._fd, self._read)

    def _read(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                self.close()
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                logger.info(
                    "shim %s/%s: %s",
                    self._bundle.namespace,
                    self._bundle.id,
                    line.decode(errors="replace"),
                )

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None


def _exit_from(pid: int, status: int, exited_at: timestamp_pb2.Timestamp) -> Exit:
    ts = int(exited_at.ToNanoseconds()) if exited_at.ByteSize() else 0
    return Exit(pid=pid, status=status, timestamp_ns=ts)


class ShimTask:
    """One task served by a shim. Methods take ``exec_id`` ("" is the init process).

    Every method raises what the shim answers (errdefs kinds) and ``Unavailable`` if
    the shim has gone away.
    """

    def __init__(
        self,
        bundle: Bundle,
        client: Client,
        binary: ShimBinary,
        log: ShimLog | None,
        on_lost: Callable[[ShimTask], None],
    ) -> None:
        self.bundle = bundle
        self.binary = binary
        self._client = client
        self._log = log
        self._on_lost = on_lost
        self._closing = False
        self._closed = asyncio.Event()
        client.add_close_callback(self._connection_closed)

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def namespace(self) -> str:
        return self.bundle.namespace

    def _connection_closed(self, *_: object) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._log is not None:
            self._log.close()
        if not self._closing:
            logger.info("shim disconnected: %s/%s", self.namespace, self.id)
            self._on_lost(self)

    async def _call(
        self, method: str, request: message.Message, response: type[M], timeout: float | None = None
    ) -> M:
        result = await self._client.call(
            SERVICE,
            method,
            request,
            response,
            metadata={TTRPC_HEADER: self.namespace},
            timeout=timeout,
        )
        return result

    # -- the task (and its exec processes) --------------------------------------------

    async def connect(self, timeout: float | None = None) -> shim_pb2.ConnectResponse:
        return await self._call(
            "Connect", shim_pb2.ConnectRequest(id=self.id), shim_pb2.ConnectResponse, timeout
        )

    async def pid(self) -> int:
        return (await self.connect()).task_pid

    async def create(self, opts: CreateOpts) -> int:
        request = shim_pb2.CreateTaskRequest(
            id=self.id,
            bundle=str(self.bundle.path),
            rootfs=[
                # containerd drops the target: rootfs mounts all go on <bundle>/rootfs.
                type(m)(type=m.type, source=m.source, options=list(m.options))
                for m in opts.rootfs
            ],
            terminal=opts.io.terminal,
            stdin=opts.io.stdin,
            stdout=opts.io.stdout,
            stderr=opts.io.stderr,
            checkpoint=opts.checkpoint,
        )
        options = opts.options
        if options is not None:
            request.options.CopyFrom(options)
        resp = await self._call("Create", request, shim_pb2.CreateTaskResponse)
        return resp.pid

    async def start(self, exec_id: str = "") -> int:
        resp = await self._call(
            "Start", shim_pb2.StartRequest(id=self.id, exec_id=exec_id), shim_pb2.StartResponse
        )
        return resp.pid

    async def state(self, exec_id: str = "") -> shim_pb2.StateResponse:
        """The process's state.

        Raises:
            NotFound: no such process, or the shim is gone.
        """
        try:
            return await self._call(
                "State",
                shim_pb2.StateRequest(id=self.id, exec_id=exec_id),
                shim_pb2.StateResponse,
                STATE_TIMEOUT,
            )
        except Unavailable as exc:
            raise NotFound(f"task {self.id}: shim is gone") from exc

    async def kill(self, signal: int, all_: bool = False, exec_id: str = "") -> None:
        request = shim_pb2.KillRequest(
            id=self.id, exec_id=exec_id, signal=signal, all=all_ and not exec_id
        )
        await self._call("Kill", request, empty_pb2.Empty)

    async def exec(self, exec_id: str, io: IO, spec: any_pb2.Any | None) -> None:
        """Add an exec process (started by ``start(exec_id)``).

        Raises:
            InvalidArgument: ``exec_id`` is not a valid identifier.
        """
        try:
            identifiers.validate(exec_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid exec id {exec_id}: {exc}") from exc
        request = shim_pb2.ExecProcessRequest(
            id=self.id,
            exec_id=exec_id,
            terminal=io.terminal,
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
        )
        if spec is not None:
            request.spec.CopyFrom(spec)
        await self._call("Exec", request, empty_pb2.Empty)

    async def pids(self) -> list[task_pb2.ProcessInfo]:
        resp = await self._call("Pids", shim_pb2.PidsRequest(id=self.id), shim_pb2.PidsResponse)
        return list(resp.processes)

    async def pause(self) -> None:
        await self._call("Pause", shim_pb2.PauseRequest(id=self.id), empty_pb2.Empty)

    async def resume(self) -> None:
        await self._call("Resume", shim_pb2.ResumeRequest(id=self.id), empty_pb2.Empty)

    async def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        request = shim_pb2.ResizePtyRequest(id=self.id, exec_id=exec_id, width=width, height=height)
        await self._call("ResizePty", request, empty_pb2.Empty)

    async def close_io(self, exec_id: str = "") -> None:
        request = shim_pb2.CloseIORequest(id=self.id, exec_id=exec_id, stdin=True)
        await self._call("CloseIO", request, empty_pb2.Empty)

    async def update(self, resources: any_pb2.Any | None, annotations: Mapping[str, str]) -> None:
        request = shim_pb2.UpdateTaskRequest(id=self.id, annotations=dict(annotations))
        if resources is not None:
            request.resources.CopyFrom(resources)
        await self._call("Update", request, empty_pb2.Empty)

    async def checkpoint(self, path: str, options: any_pb2.Any | None) -> None:
        request = shim_pb2.CheckpointTaskRequest(id=self.id, path=path)
        if options is not None:
            request.options.CopyFrom(options)
        await self._call("Checkpoint", request, empty_pb2.Empty)

    async def wait(self, exec_id: str = "") -> Exit:
        """Block until the process exits.

        Cancelling abandons the wait; the process is unaffected.
        """
        pid = 0
        if not exec_id:
            pid = await self.pid()
        resp = await self._call(
            "Wait", shim_pb2.WaitRequest(id=self.id, exec_id=exec_id), shim_pb2.WaitResponse
        )
        return _exit_from(pid, resp.exit_status, resp.exited_at)

    async def stats(self) -> any_pb2.Any:
        resp = await self._call("Stats", shim_pb2.StatsRequest(id=self.id), shim_pb2.StatsResponse)
        return resp.stats

    async def delete_process(self, exec_id: str = "") -> Exit:
        """Delete a stopped process (the task itself with ``exec_id`` "")."""
        resp = await self._call(
            "Delete",
            shim_pb2.DeleteRequest(id=self.id, exec_id=exec_id),
            shim_pb2.DeleteResponse,
        )
        return _exit_from(resp.pid, resp.exit_status, resp.exited_at)

    # -- the shim ----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Ask the shim to exit once it serves no task; a closed connection is fine.

        The connection closing after this is expected: ``on_lost`` will not run.
        """
        self._closing = True
        with contextlib.suppress(Unavailable, TimeoutError):
            await self._call(
                "Shutdown",
                shim_pb2.ShutdownRequest(id=self.id),
                empty_pb2.Empty,
                SHUTDOWN_TIMEOUT,
            )

    async def close(self) -> None:
        """Close the connection on purpose (``on_lost`` does not run)."""
        self._closing = True
        await self._client.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await self._client.wait_closed()
        self._connection_closed()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
