"""The Tasks service logic (containerd's services/tasks/local.go).

Shaped like the gRPC client: each method takes the request message and returns the
response, so in-process callers (CRI) use it as they would the API. Every call first
finds the container (``NotFound`` if it does not exist), then its task in runtime v2.
The shim publishes the task events (``/tasks/create``, ``/tasks/start``,
``/tasks/exit``, ``/tasks/delete`` ...); the runtime publishes exit and delete only for
a shim that died.
"""

from __future__ import annotations

import logging
import time

from google.protobuf import any_pb2, empty_pb2

from pycontainerd import namespaces
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2 as api
from pycontainerd._api.containerd.types import metrics_pb2
from pycontainerd._api.containerd.types.task import task_pb2
from pycontainerd.errdefs import (
    ContainerdError,
    InvalidArgument,
    NotFound,
    NotImplemented_,
)
from pycontainerd.metadata import containers
from pycontainerd.metadata.db import DB
from pycontainerd.runtime import IO, CreateOpts, Exit
from pycontainerd.runtime.v2.manager import ShimManager
from pycontainerd.runtime.v2.shim import ShimTask
from pycontainerd.sansio import filters
from pycontainerd.services.timestamps import to_pb

logger = logging.getLogger(__name__)

_EMPTY = empty_pb2.Empty()


def process_from_state(id_: str, state: shim_pb2.StateResponse) -> task_pb2.Process:
    """The API's Process for a shim state, as containerd fills it (no container_id)."""
    process = task_pb2.Process(
        id=id_,
        pid=state.pid,
        status=state.status,
        stdin=state.stdin,
        stdout=state.stdout,
        stderr=state.stderr,
        terminal=state.terminal,
        exit_status=state.exit_status,
    )
    if state.HasField("exited_at"):
        process.exited_at.CopyFrom(state.exited_at)
    return process


def _delete_response(id_: str, exit_: Exit) -> api.DeleteResponse:
    resp = api.DeleteResponse(id=id_, pid=exit_.pid, exit_status=exit_.status)
    if exit_.timestamp_ns:
        resp.exited_at.CopyFrom(to_pb(exit_.timestamp_ns))
    return resp


def _any_or_none(holder: object, field: str) -> any_pb2.Any | None:
    if holder.HasField(field):  # type: ignore[attr-defined]
        value: any_pb2.Any = getattr(holder, field)
        return value
    return None


class TasksLocal:
    def __init__(self, db: DB, runtime: ShimManager) -> None:
        self._db = db
        self._runtime = runtime

    async def _container(self, id_: str) -> containers.Container:
        ns = namespaces.required()
        return await self._db.view(lambda conn: containers.get(conn, ns, id_), point=True)

    async def _task(self, id_: str) -> ShimTask:
        await self._container(id_)
        try:
            return self._runtime.get(id_)
        except NotFound:
            raise NotFound(f"task {id_} not found") from None

    async def _state(self, task: ShimTask, exec_id: str = "") -> task_pb2.Process:
        """A process's state; a shim that cannot say is reported as UNKNOWN (as
        containerd does), one that forgot the process as NotFound."""
        id_ = exec_id or task.id
        try:
            state = await task.state(exec_id)
        except NotFound:
            raise
        except (ContainerdError, TimeoutError) as exc:
            logger.error("get state for %s: %s", id_, exc)
            return task_pb2.Process(id=id_, status=task_pb2.UNKNOWN)
        return process_from_state(id_, state)

    async def Create(self, r: api.CreateTaskRequest) -> api.CreateTaskResponse:
        """Start a shim and create the task of container ``r.container_id``.

        Raises:
            NotFound: no such container, or its runtime is not installed.
            AlreadyExists: the container has a task.
            NotImplemented_: a checkpoint to restore from (CRIU does not work here).
            InvalidArgument: the container has no spec.
            the shim's error (runc's message for a spec it refuses).
        """
        container = await self._container(r.container_id)
        if r.HasField("checkpoint") and r.checkpoint.digest:
            raise NotImplemented_("restoring a task from a checkpoint is not supported")
        if container.spec is None or not container.spec.value:
            raise InvalidArgument(f"container {r.container_id} has no spec")
        runtime_options = None
        if container.runtime.options is not None:
            runtime_options = any_pb2.Any(
                type_url=container.runtime.options.type_url,
                value=container.runtime.options.value,
            )
        opts = CreateOpts(
            spec=container.spec.value,
            runtime=r.runtime_path or container.runtime.name,
            rootfs=tuple(r.rootfs),
            io=IO(r.stdin, r.stdout, r.stderr, r.terminal),
            runtime_options=runtime_options,
            task_options=_any_or_none(r, "options"),
        )
        _, pid = await self._runtime.create(r.container_id, opts)
        return api.CreateTaskResponse(container_id=r.container_id, pid=pid)

    async def Start(self, r: api.StartRequest) -> api.StartResponse:
        task = await self._task(r.container_id)
        pid = await task.start(r.exec_id)
        return api.StartResponse(pid=pid)

    async def Delete(self, r: api.DeleteTaskRequest) -> api.DeleteResponse:
        """Delete a stopped task: its shim exits and its bundle is removed.

        Raises:
            NotFound: no container or no task.
            FailedPrecondition (from the shim): the task is still running.
        """
        await self._container(r.container_id)
        try:
            self._runtime.get(r.container_id)
        except NotFound:
            raise NotFound(f"task {r.container_id} not found") from None
        exit_ = await self._runtime.delete(r.container_id)
        resp = _delete_response("", exit_)
        return resp

    async def DeleteProcess(self, r: api.DeleteProcessRequest) -> api.DeleteResponse:
        task = await self._task(r.container_id)
        # The shim answers NotFound for an unknown exec id (containerd asks State first,
        # which costs a round trip for the same answer).
        exit_ = await task.delete_process(r.exec_id)
        return _delete_response(r.exec_id, exit_)

    async def Get(self, r: api.GetRequest) -> api.GetResponse:
        task = await self._task(r.container_id)
        return api.GetResponse(process=await self._state(task, r.exec_id))

    async def List(self, r: api.ListTasksRequest) -> api.ListTasksResponse:
        resp = api.ListTasksResponse()
        for task in self._runtime.tasks():
            try:
                resp.tasks.append(await self._state(task))
            except NotFound:
                continue  # deleted meanwhile
        return resp

    async def Kill(self, r: api.KillRequest) -> empty_pb2.Empty:
        task = await self._task(r.container_id)
        if r.exec_id:
            await task.state(r.exec_id)
        await task.kill(r.signal, r.all, r.exec_id)
        return _EMPTY

    async def Exec(self, r: api.ExecProcessRequest) -> empty_pb2.Empty:
        if not r.exec_id:
            raise InvalidArgument("exec id cannot be empty")
        task = await self._task(r.container_id)
        await task.exec(
            r.exec_id, IO(r.stdin, r.stdout, r.stderr, r.terminal), _any_or_none(r, "spec")
        )
        return _EMPTY

    async def ResizePty(self, r: api.ResizePtyRequest) -> empty_pb2.Empty:
        task = await self._task(r.container_id)
        await task.resize_pty(r.width, r.height, r.exec_id)
        return _EMPTY

    async def CloseIO(self, r: api.CloseIORequest) -> empty_pb2.Empty:
        task = await self._task(r.container_id)
        if r.stdin:
            await task.close_io(r.exec_id)
        return _EMPTY

    async def Pause(self, r: api.PauseTaskRequest) -> empty_pb2.Empty:
        await (await self._task(r.container_id)).pause()
        return _EMPTY

    async def Resume(self, r: api.ResumeTaskRequest) -> empty_pb2.Empty:
        await (await self._task(r.container_id)).resume()
        return _EMPTY

    async def ListPids(self, r: api.ListPidsRequest) -> api.ListPidsResponse:
        task = await self._task(r.container_id)
        return api.ListPidsResponse(processes=await task.pids())

    async def Checkpoint(self, r: api.CheckpointTaskRequest) -> api.CheckpointTaskResponse:
        await self._task(r.container_id)
        # CRIU cannot checkpoint on this kernel (see REFERENCES.md); say so plainly.
        raise NotImplemented_("checkpointing a task is not supported")

    async def Update(self, r: api.UpdateTaskRequest) -> empty_pb2.Empty:
        task = await self._task(r.container_id)
        await task.update(_any_or_none(r, "resources"), r.annotations)
        return _EMPTY

    async def Metrics(self, r: api.MetricsRequest) -> api.MetricsResponse:
        """Stats of the namespace's tasks matching the filters (fields ``id``,
        ``namespace``)."""
        flt = filters.parse_all(list(r.filters))
        resp = api.MetricsResponse()
        for task in self._runtime.tasks():
            fields = {"id": task.id, "namespace": task.namespace}

            def adapt(path: tuple[str, ...], fields: dict[str, str] = fields) -> tuple[str, bool]:
                if len(path) == 1 and path[0] in fields:
                    return fields[path[0]], True
                return "", False

            if not flt.match(adapt):
                continue
            collected = time.time_ns()
            try:
                stats = await task.stats()
            except NotFound:
                continue
            except ContainerdError as exc:
                logger.error("collecting metrics for %s: %s", task.id, exc)
                continue
            resp.metrics.append(
                metrics_pb2.Metric(timestamp=to_pb(collected), id=task.id, data=stats)
            )
        return resp

    async def Wait(self, r: api.WaitRequest) -> api.WaitResponse:
        """Wait for a process to exit. Cancelling abandons only the wait."""
        task = await self._task(r.container_id)
        if r.exec_id:
            await task.state(r.exec_id)
        exit_ = await task.wait(r.exec_id)
        resp = api.WaitResponse(exit_status=exit_.status)
        if exit_.timestamp_ns:
            resp.exited_at.CopyFrom(to_pb(exit_.timestamp_ns))
        return resp
