"""Tasks: running containers and the extra processes exec'd in them.

``await client.tasks.create(container, io=cio.stdio(...))`` makes the task (the shim
and runc's ``create``); ``start`` runs it, ``wait`` returns its ``ExitStatus``,
``delete`` removes it and closes its IO. Exec'd processes are ``Process`` objects with
the same calls. The rootfs mounts are fetched from the container's snapshotter here, in
the client, as containerd's client does.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import signal as signals
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc.aio
from google.protobuf import any_pb2, message

from pycontainerd import typeurl
from pycontainerd.client import cio
from pycontainerd.client.aio import AsyncAPI
from pycontainerd.client.containers import Container, ContainersAPI
from pycontainerd.errdefs import ContainerdError, FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.errdefs_grpc import from_grpc

from pycontainerd._api.containerd.services.tasks.v1 import (  # isort: skip
    tasks_pb2 as tpb,
    tasks_pb2_grpc as tgrpc,
)
from pycontainerd._api.containerd.types.runc.options import oci_pb2 as runc_options
from pycontainerd._api.containerd.types.task import task_pb2

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
# Linux/runc-specific resources for Update, as containerd's typeurl names them.
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

STATUS_NAMES = {
    task_pb2.UNKNOWN: "UNKNOWN",
    task_pb2.CREATED: "CREATED",
    task_pb2.RUNNING: "RUNNING",
    task_pb2.STOPPED: "STOPPED",
    task_pb2.PAUSED: "PAUSED",
    task_pb2.PAUSING: "PAUSING",
}


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: its exit code (128+signal when killed) and when."""

    code: int
    exited_at_ns: int


@dataclass(frozen=True, slots=True)
class ProcessState:
    """A process as the daemon reports it (``status`` is RUNNING, STOPPED …)."""

    container_id: str
    id: str
    pid: int
    status: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    exit_status: int = 0
    exited_at_ns: int = 0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One pid inside a task; ``exec_id`` is set for an exec'd process (runc shims)."""

    pid: int
    exec_id: str = ""


@dataclass(frozen=True, slots=True)
class Metric:
    """A metrics sample; ``data`` is the decoded message or the raw Any if unknown."""

    id: str
    timestamp_ns: int
    data: Any
    type_url: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def _state(p: task_pb2.Process) -> ProcessState:
    return ProcessState(
        container_id=p.container_id or p.id,  # List names a task by ``id`` only
        id=p.id,
        pid=p.pid,
        status=STATUS_NAMES.get(p.status, "UNKNOWN"),
        stdin=p.stdin,
        stdout=p.stdout,
        stderr=p.stderr,
        terminal=p.terminal,
        exit_status=p.exit_status,
        exited_at_ns=p.exited_at.ToNanoseconds(),
    )


def parse_signal(value: str | int) -> int:
    """``9``, ``KILL`` or ``SIGKILL`` to a signal number. Raises InvalidArgument."""
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


class _ProcessBase(AsyncAPI):
    def __init__(
        self, client: AsyncClient, container_id: str, exec_id: str, io: cio.ProcessIO | None
    ) -> None:
        self._client = client
        self.container_id = container_id
        self.exec_id = exec_id
        self.io = io
        self.pid = 0
        self._stdin_closer: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.exec_id or self.container_id

    @property
    def _stub(self) -> tgrpc.TasksAsyncStub:
        return tgrpc.TasksStub(self._client.channel)

    async def start(self) -> int:
        """Start the process; returns its pid. Raises NotFound, FailedPrecondition."""
        req = tpb.StartRequest(container_id=self.container_id, exec_id=self.exec_id)
        try:
            self.pid = (await self._client.call(self._stub.Start, req)).pid
        except BaseException:
            if self.io is not None:
                await self.io.close()
            raise
        # As ctr: a terminal's input ends with the console, without a CloseIO.
        io = self.io
        if io is not None and io.stdin_done is not None and not io.config.terminal:
            self._stdin_closer = asyncio.create_task(self._close_stdin_at_eof(io.stdin_done))
        return self.pid

    async def _close_stdin_at_eof(self, stdin_done: asyncio.Future[None]) -> None:
        with contextlib.suppress(Exception):  # an input error or a process already gone
            await stdin_done
        with contextlib.suppress(ContainerdError):
            req = tpb.CloseIORequest(
                container_id=self.container_id, exec_id=self.exec_id, stdin=True
            )
            await self._client.call(self._stub.CloseIO, req)

    async def wait(self) -> ExitStatus:
        """Until the process exits (no time limit), then until its output is copied.

        Cancelling leaves the process running and its IO attached.

        Raises:
            NotFound: the process (or task) does not exist.
        """
        req = tpb.WaitRequest(container_id=self.container_id, exec_id=self.exec_id)
        try:
            resp = await self._stub.Wait(req, metadata=self._client.metadata(), timeout=None)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        if self.io is not None:
            await self.io.wait()
        return ExitStatus(resp.exit_status, resp.exited_at.ToNanoseconds())

    async def kill(self, signal: int | str = signals.SIGTERM, *, all: bool = False) -> None:
        """Signal the process (``all``: every process in the container).

        Raises NotFound; FailedPrecondition when it is not running.
        """
        req = tpb.KillRequest(
            container_id=self.container_id,
            exec_id=self.exec_id,
            signal=parse_signal(signal),
            all=all,
        )
        await self._client.call(self._stub.Kill, req)

    async def status(self) -> ProcessState:
        """Raises NotFound."""
        req = tpb.GetRequest(container_id=self.container_id, exec_id=self.exec_id)
        return _state((await self._client.call(self._stub.Get, req)).process)

    async def resize(self, width: int, height: int) -> None:
        """Resize the process's terminal. Raises NotFound."""
        req = tpb.ResizePtyRequest(
            container_id=self.container_id, exec_id=self.exec_id, width=width, height=height
        )
        await self._client.call(self._stub.ResizePty, req)

    async def close_io(self, *, stdin: bool = True) -> None:
        """Close the process's stdin, locally and in the shim: it reads EOF."""
        if stdin and self.io is not None:
            self.io.close_stdin()
        req = tpb.CloseIORequest(container_id=self.container_id, exec_id=self.exec_id, stdin=stdin)
        await self._client.call(self._stub.CloseIO, req)

    async def _delete_response(self) -> tpb.DeleteResponse:
        raise NotImplementedError

    async def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the stopped process and close its IO; returns how it exited.

        ``force`` kills it first (SIGKILL) and waits for it.

        Raises:
            NotFound: no such process.
            FailedPrecondition: it is still running (without ``force``).
        """
        if force:
            with_status = await self.status()
            if with_status.status not in ("STOPPED", "CREATED"):
                waiter = asyncio.ensure_future(self.wait())
                try:
                    await self.kill(signals.SIGKILL, all=not self.exec_id)
                    await waiter
                except NotFound:
                    waiter.cancel()
        resp = await self._delete_response()
        if self._stdin_closer is not None:
            self._stdin_closer.cancel()
        if self.io is not None:
            self.io.cancel()
            await self.io.close()
        return ExitStatus(resp.exit_status, resp.exited_at.ToNanoseconds())


class Process(_ProcessBase):
    """A process exec'd in a task."""

    async def _delete_response(self) -> tpb.DeleteResponse:
        req = tpb.DeleteProcessRequest(container_id=self.container_id, exec_id=self.exec_id)
        return await self._client.call(self._stub.DeleteProcess, req)


class Task(_ProcessBase):
    """A container's task (its init process and everything in its cgroup)."""

    def __init__(self, client: AsyncClient, container_id: str, io: cio.ProcessIO | None) -> None:
        super().__init__(client, container_id, "", io)

    async def _delete_response(self) -> tpb.DeleteResponse:
        req = tpb.DeleteTaskRequest(container_id=self.container_id)
        return await self._client.call(self._stub.Delete, req)

    async def exec(
        self,
        exec_id: str,
        process: Mapping[str, Any],
        io: cio.Creator | None = None,
    ) -> Process:
        """Create (not start) a process in the task from an OCI ``process`` object
        (``args``, ``env``, ``cwd``, ``user``, ``terminal`` …); its IO from ``io``.

        Raises:
            AlreadyExists: the exec id is taken.
            NotFound: no such task.
            FailedPrecondition: the task is not running.
        """
        process_io = await (io or cio.null_io())(exec_id)
        spec = any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(dict(process)).encode())
        cfg = process_io.config
        req = tpb.ExecProcessRequest(
            container_id=self.container_id,
            exec_id=exec_id,
            stdin=cfg.stdin,
            stdout=cfg.stdout,
            stderr=cfg.stderr,
            terminal=cfg.terminal,
            spec=spec,
        )
        try:
            await self._client.call(self._stub.Exec, req)
        except BaseException:
            await process_io.close()
            raise
        return Process(self._client, self.container_id, exec_id, process_io)

    async def load_process(self, exec_id: str, io: cio.ProcessIO | None = None) -> Process:
        """An existing exec'd process. Raises NotFound."""
        proc = Process(self._client, self.container_id, exec_id, io)
        proc.pid = (await proc.status()).pid
        return proc

    async def pause(self) -> None:
        """Freeze every process of the task. Raises NotFound, FailedPrecondition."""
        await self._client.call(
            self._stub.Pause, tpb.PauseTaskRequest(container_id=self.container_id)
        )

    async def resume(self) -> None:
        """Thaw a paused task. Raises NotFound, FailedPrecondition."""
        await self._client.call(
            self._stub.Resume, tpb.ResumeTaskRequest(container_id=self.container_id)
        )

    async def pids(self) -> list[ProcessInfo]:
        """The processes in the task's cgroup. Raises NotFound."""
        resp = await self._client.call(
            self._stub.ListPids, tpb.ListPidsRequest(container_id=self.container_id)
        )
        out = []
        for p in resp.processes:
            exec_id = ""
            if p.HasField("info") and p.info.type_url.endswith("ProcessDetails"):
                details = runc_options.ProcessDetails()
                try:
                    details.ParseFromString(p.info.value)
                    exec_id = details.exec_id
                except message.DecodeError:
                    pass
            out.append(ProcessInfo(p.pid, exec_id))
        return out

    async def metrics(self) -> Metric:
        """One sample of the task's cgroup statistics. Raises NotFound."""
        metrics = await TasksAPI(self._client).metrics([f"id=={self.container_id}"])
        if not metrics:
            raise NotFound(f"no metrics for task {self.container_id}")
        return metrics[0]

    async def update(
        self,
        resources: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Change the task's resources (an OCI ``linux.resources`` object) or annotations.

        Raises NotFound.
        """
        req = tpb.UpdateTaskRequest(
            container_id=self.container_id, annotations=dict(annotations or {})
        )
        if resources is not None:
            req.resources.CopyFrom(
                any_pb2.Any(type_url=RESOURCES_TYPE_URL, value=json.dumps(dict(resources)).encode())
            )
        await self._client.call(self._stub.Update, req)


class TasksAPI(AsyncAPI):
    """The Tasks service (``client.tasks``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def _stub(self) -> tgrpc.TasksAsyncStub:
        return tgrpc.TasksStub(self._client.channel)

    async def create(
        self,
        container: Container | str,
        io: cio.Creator | None = None,
        *,
        options: any_pb2.Any | None = None,
        runtime_path: str = "",
    ) -> Task:
        """Create the container's task (not started) with IO from ``io`` (none when
        None). The rootfs comes from the container's snapshot.

        Raises:
            NotFound: no such container, or its snapshot is gone.
            AlreadyExists: the container has a task.
        Cancelling after the daemon has created the task leaves it created; delete it.
        """
        if isinstance(container, str):
            container = await ContainersAPI(self._client).get(container)
        rootfs = await ContainersAPI(self._client).rootfs_mounts(container)
        process_io = await (io or cio.null_io())(container.id)
        cfg = process_io.config
        req = tpb.CreateTaskRequest(
            container_id=container.id,
            rootfs=rootfs,
            stdin=cfg.stdin,
            stdout=cfg.stdout,
            stderr=cfg.stderr,
            terminal=cfg.terminal,
            options=options,
            runtime_path=runtime_path,
        )
        try:
            resp = await self._client.call(self._stub.Create, req)
        except BaseException:
            await process_io.close()
            raise
        task = Task(self._client, container.id, process_io)
        task.pid = resp.pid
        return task

    async def get(self, container_id: str, io: cio.ProcessIO | None = None) -> Task:
        """An existing task, with ``io`` if the caller re-attached it. Raises NotFound."""
        task = Task(self._client, container_id, io)
        task.pid = (await task.status()).pid
        return task

    async def attach(
        self,
        container_id: str,
        *,
        stdin: cio.Reader | None = None,
        stdout: cio.Writer | None = None,
        stderr: cio.Writer | None = None,
    ) -> Task:
        """An existing task with its FIFOs copied to and from these streams.

        Raises:
            NotFound: no such task.
            FailedPrecondition: the task's IO is not FIFOs (a log URI, or none).
        """
        task = Task(self._client, container_id, None)
        state = await task.status()
        cfg = cio.attachable(cio.IOConfig(state.stdin, state.stdout, state.stderr, state.terminal))
        if not (cfg.stdout or cfg.stdin):
            raise FailedPrecondition(f"task {container_id} has no FIFO IO to attach to")
        task.io = cio.attach_fifos(cfg, stdin=stdin, stdout=stdout, stderr=stderr, running=True)
        task.pid = state.pid
        return task

    async def list(self, filter: str = "") -> list[ProcessState]:
        """Every task in the namespace."""
        resp = await self._client.call(self._stub.List, tpb.ListTasksRequest(filter=filter))
        return [_state(t) for t in resp.tasks]

    async def metrics(self, filters: Iterable[str] = ()) -> builtins.list[Metric]:
        """A sample for each task matching the filters (``id==<id>``)."""
        resp = await self._client.call(
            self._stub.Metrics, tpb.MetricsRequest(filters=list(filters))
        )
        out = []
        for m in resp.metrics:
            data: Any = m.data
            with contextlib.suppress(NotFound, message.DecodeError):  # unknown: keep the Any
                data = typeurl.unmarshal_any(m.data)
            out.append(Metric(m.id, m.timestamp.ToNanoseconds(), data, m.data.type_url))
        return out
