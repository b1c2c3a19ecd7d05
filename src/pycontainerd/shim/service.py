"""``containerd.task.v2.Task``: the runc shim's task service, for every container of
its group."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal as signals
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import empty_pb2
from google.protobuf import message as pb_message

from pycontainerd import errdefs
from pycontainerd._api.containerd.events import task_pb2 as events
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2 as pb
from pycontainerd._api.containerd.types.runc.options import oci_pb2
from pycontainerd._api.containerd.types.task import task_pb2 as task_types
from pycontainerd.shim import process as states
from pycontainerd.shim.cleanup import OPTIONS_FILE
from pycontainerd.shim.io import open_io
from pycontainerd.shim.oom import OOMWatcher
from pycontainerd.shim.process import Process
from pycontainerd.shim.publish import Publisher
from pycontainerd.shim.reaper import Reaper
from pycontainerd.shim.runc import Runc, checkpoint_args, config_for, create_args, exec_args
from pycontainerd.ttrpc import RequestContext, Server

logger = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
_DELETE_EXIT_WAIT = 2.0
# A place promised to a container whose Create never comes is given back after this.
RESERVATION_SECONDS = 60.0
_CONSOLE_DRAIN = 2.0


@dataclass(eq=False)
class Container:
    id: str
    namespace: str
    bundle: Path
    runc: Runc
    init: Process
    rootfs_mounted: bool = False
    oom: OOMWatcher | None = None
    execs: dict[str, Process] = field(default_factory=dict)

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise errdefs.NotFound(f"process {exec_id} does not exist") from None


def runc_options(value: object) -> oci_pb2.Options:
    """The runc Options of a CreateTaskRequest (an Any), or the defaults."""
    options = oci_pb2.Options()
    type_url = getattr(value, "type_url", "")
    if type_url and type_url.rsplit("/", 1)[-1] == RUNC_OPTIONS_TYPE:
        options.ParseFromString(getattr(value, "value", b""))
    return options


def write_options(bundle: Path, options: oci_pb2.Options) -> None:
    """Saved as containerd does (Go JSON names) for the ``delete`` command."""
    data = {
        "binary_name": options.binary_name,
        "root": options.root,
        "systemd_cgroup": options.systemd_cgroup,
    }
    (bundle / OPTIONS_FILE).write_text(json.dumps(data))


class TaskService:
    """Every container of this shim, keyed by id."""

    def __init__(
        self, namespace: str, reaper: Reaper, publisher: Publisher, on_empty: Callable[[], None]
    ) -> None:
        self.namespace = namespace
        self.reaper = reaper
        self.publisher = publisher
        self.containers: dict[str, Container] = {}
        self._on_empty = on_empty
        self._watchers: set[asyncio.Task[None]] = set()
        # Containers the fork server placed here whose Create has not come yet.
        self._reserved: dict[str, asyncio.TimerHandle] = {}
        self._leaving = False

    def register(self, server: Server) -> None:
        methods = {
            "State": (pb.StateRequest, self.state),
            "Create": (pb.CreateTaskRequest, self.create),
            "Start": (pb.StartRequest, self.start),
            "Delete": (pb.DeleteRequest, self.delete),
            "Pids": (pb.PidsRequest, self.pids),
            "Pause": (pb.PauseRequest, self.pause),
            "Resume": (pb.ResumeRequest, self.resume),
            "Checkpoint": (pb.CheckpointTaskRequest, self.checkpoint),
            "Kill": (pb.KillRequest, self.kill),
            "Exec": (pb.ExecProcessRequest, self.exec),
            "ResizePty": (pb.ResizePtyRequest, self.resize_pty),
            "CloseIO": (pb.CloseIORequest, self.close_io),
            "Update": (pb.UpdateTaskRequest, self.update),
            "Wait": (pb.WaitRequest, self.wait),
            "Stats": (pb.StatsRequest, self.stats),
            "Connect": (pb.ConnectRequest, self.connect),
            "Shutdown": (pb.ShutdownRequest, self.shutdown),
        }
        server.register(SERVICE, methods)  # type: ignore[arg-type]

    def reserve(self, container_id: str, limit: int) -> bool:
        """Promises a place to ``container_id``, whose Create is on its way: False when
        ``limit`` containers are served or promised, or this shim is leaving."""
        if self._leaving:
            return False
        if container_id in self.containers or container_id in self._reserved:
            return True
        if len(self.containers) + len(self._reserved) >= limit:
            return False
        loop = asyncio.get_running_loop()
        self._reserved[container_id] = loop.call_later(
            RESERVATION_SECONDS, self._give_back, container_id
        )
        return True

    def _give_back(self, container_id: str) -> None:
        self._reserved.pop(container_id, None)
        self._leave_if_idle()

    def _leave_if_idle(self) -> None:
        if self.containers or self._reserved or self._leaving:
            return
        self._leaving = True
        # After the current answer is sent: its caller must see it before we go.
        asyncio.get_running_loop().call_soon(self._on_empty)

    def _container(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise errdefs.NotFound(f"container {container_id} does not exist") from None

    def _publish(self, ns: str, event: pb_message.Message) -> None:
        self.publisher.publish(ns, event)

    def _ns(self, ctx: RequestContext) -> str:
        return ctx.namespace or self.namespace

    # -- lifecycle -------------------------------------------------------------------

    async def create(self, req: pb.CreateTaskRequest, ctx: RequestContext) -> pb.CreateTaskResponse:
        if req.id in self.containers:
            raise errdefs.AlreadyExists(f"container {req.id} already exists")
        promised = self._reserved.pop(req.id, None)
        if promised is not None:
            promised.cancel()
        if req.checkpoint or req.parent_checkpoint:
            raise errdefs.NotImplemented_("restoring from a checkpoint is not supported")
        ns = self._ns(ctx)
        bundle = Path(req.bundle)
        options = runc_options(req.options if req.HasField("options") else None)
        # Small local file and mount calls run inline: a first asyncio.to_thread in a new
        # shim starts the executor's thread, which costs milliseconds on every create.
        write_options(bundle, options)
        runc = Runc(
            config_for(ns, bundle, options.binary_name, options.root, options.systemd_cgroup),
            self.reaper,
        )
        init = Process(req.id, "", req.stdin, req.stdout, req.stderr, req.terminal)
        container = Container(req.id, ns, bundle, runc, init)
        self.containers[req.id] = container
        try:
            if req.rootfs:
                _mount_rootfs(list(req.rootfs), bundle / "rootfs")
                container.rootfs_mounted = True
            pid_file = bundle / "init.pid"
            args = create_args(
                str(bundle),
                str(pid_file),
                req.id,
                no_pivot=options.no_pivot_root,
                no_new_keyring=options.no_new_keyring,
            )
            await self._launch(container, init, args, pid_file)
        except BaseException:
            self.containers.pop(req.id, None)
            if container.rootfs_mounted:
                _unmount_rootfs(bundle / "rootfs")
            raise
        container.oom = OOMWatcher.start(
            init.pid, lambda: self._publish(ns, events.TaskOOM(container_id=req.id))
        )
        self._publish(
            ns,
            events.TaskCreate(
                container_id=req.id,
                bundle=req.bundle,
                rootfs=list(req.rootfs),
                io=events.TaskIO(
                    stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal
                ),
                checkpoint=req.checkpoint,
                pid=init.pid,
            ),
        )
        return pb.CreateTaskResponse(pid=init.pid)

    async def _launch(
        self, container: Container, proc: Process, args: list[str], pid_file: Path
    ) -> None:
        """Runs runc create/exec for ``proc`` with its stdio, then watches its exit."""
        console_socket = None
        if proc.terminal:
            from pycontainerd.shim.console import ConsoleSocket

            console_socket = ConsoleSocket.create()
            # --console-socket goes before the container id.
            args = [*args[:-1], "--console-socket", console_socket.path, args[-1]]
        try:
            proc.io = await open_io(
                "" if proc.terminal else proc.stdin,
                "" if proc.terminal else proc.stdout,
                "" if proc.terminal else proc.stderr,
                namespace=container.namespace,
                container_id=container.id,
                reaper=self.reaper,
            )
            receive = asyncio.ensure_future(console_socket.receive()) if console_socket else None
            try:
                try:
                    await container.runc.run(args, stdio=proc.io.stdio)
                except errdefs.ContainerdError as exc:
                    # As containerd's shim: runc's words under what failed, code Unknown.
                    what = "exec" if args[0] == "exec" else "create"
                    raise errdefs.Unknown(f"OCI runtime {what} failed: {exc.message}") from exc
                if receive is not None:
                    async with asyncio.timeout(10):
                        master = await receive
                    from pycontainerd.shim.console import Console

                    proc.console = Console.start(master, proc.stdin, proc.stdout)
            finally:
                if receive is not None and not receive.done():
                    receive.cancel()
                proc.io.release_child_fds()
            proc.pid = int(pid_file.read_text().strip())
        except BaseException:
            if proc.io is not None:
                proc.io.close()
            raise
        finally:
            if console_socket is not None:
                console_socket.close()
        watcher = asyncio.get_running_loop().create_task(self._watch_exit(container, proc))
        # asyncio keeps only weak references to tasks.
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch_exit(self, container: Container, proc: Process) -> None:
        code = await self.reaper.wait(proc.pid)
        if proc.console is not None:
            from pycontainerd.shim.console import Console

            assert isinstance(proc.console, Console)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CONSOLE_DRAIN):
                    await proc.console.wait_output()
        if proc.io is not None:
            proc.io.close_stdin()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DELETE_EXIT_WAIT):
                await proc.start_published.wait()
        proc.set_exited(code)
        self._publish(
            container.namespace,
            events.TaskExit(
                container_id=container.id,
                id=proc.id,
                pid=proc.pid,
                exit_status=code,
                exited_at=proc.exited_at,
            ),
        )

    async def start(self, req: pb.StartRequest, ctx: RequestContext) -> pb.StartResponse:
        container = self._container(req.id)
        proc = container.process(req.exec_id)
        if proc.exited.is_set() or (proc.pid and proc.status != states.CREATED):
            raise errdefs.FailedPrecondition(f"process {proc.id} is not in the created state")
        if not req.exec_id:
            try:
                await container.runc.start(req.id)
            except BaseException:
                proc.start_published.set()
                raise
            proc.status = states.RUNNING
            self._publish(container.namespace, events.TaskStart(container_id=req.id, pid=proc.pid))
            proc.start_published.set()
            return pb.StartResponse(pid=proc.pid)
        spec_file = container.bundle / f"{req.exec_id}.process.json"
        pid_file = container.bundle / f"{req.exec_id}.pid"
        spec_file.write_bytes(proc.spec)
        try:
            await self._launch(
                container, proc, exec_args(str(spec_file), str(pid_file), req.id), pid_file
            )
        except BaseException:
            proc.start_published.set()
            raise
        finally:
            with contextlib.suppress(OSError):
                spec_file.unlink()
        proc.status = states.RUNNING
        self._publish(
            container.namespace,
            events.TaskExecStarted(container_id=req.id, exec_id=req.exec_id, pid=proc.pid),
        )
        proc.start_published.set()
        return pb.StartResponse(pid=proc.pid)

    async def delete(self, req: pb.DeleteRequest, ctx: RequestContext) -> pb.DeleteResponse:
        container = self._container(req.id)
        proc = container.process(req.exec_id)
        if proc.pid and proc.current_status not in (states.CREATED, states.STOPPED):
            raise errdefs.FailedPrecondition(f"cannot delete a running process {proc.id}")
        if req.exec_id:
            del container.execs[req.exec_id]
            _close_process(proc)
            return _delete_response(proc)
        with contextlib.suppress(errdefs.NotFound):
            await container.runc.delete(req.id)
        if not proc.exited.is_set():
            # A created init is killed by ``runc delete --force``; report its exit.
            proc.start_published.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DELETE_EXIT_WAIT):
                    await proc.exited.wait()
        if container.rootfs_mounted:
            _unmount_rootfs(container.bundle / "rootfs")
            container.rootfs_mounted = False
        for process in (proc, *container.execs.values()):
            _close_process(process)
        if container.oom is not None:
            container.oom.close()
        self.containers.pop(req.id, None)
        self._publish(
            container.namespace,
            events.TaskDelete(
                container_id=req.id,
                pid=proc.pid,
                exit_status=proc.exit_status,
                exited_at=proc.exited_at,
                id=req.id,
            ),
        )
        return _delete_response(proc)

    async def exec(self, req: pb.ExecProcessRequest, ctx: RequestContext) -> empty_pb2.Empty:
        container = self._container(req.id)
        if req.exec_id in container.execs:
            raise errdefs.AlreadyExists(f"id {req.exec_id}")
        if container.init.exited.is_set():
            raise errdefs.FailedPrecondition(f"container {req.id} is stopped")
        container.execs[req.exec_id] = Process(
            req.id, req.exec_id, req.stdin, req.stdout, req.stderr, req.terminal, req.spec.value
        )
        self._publish(
            container.namespace, events.TaskExecAdded(container_id=req.id, exec_id=req.exec_id)
        )
        return empty_pb2.Empty()

    # -- queries ---------------------------------------------------------------------

    async def state(self, req: pb.StateRequest, ctx: RequestContext) -> pb.StateResponse:
        container = self._container(req.id)
        proc = container.process(req.exec_id)
        return pb.StateResponse(
            id=proc.id,
            bundle=str(container.bundle),
            pid=proc.pid,
            status=proc.current_status,
            stdin=proc.stdin,
            stdout=proc.stdout,
            stderr=proc.stderr,
            terminal=proc.terminal,
            exit_status=proc.exit_status,
            exited_at=proc.exited_at,
            exec_id=req.exec_id,
        )

    async def wait(self, req: pb.WaitRequest, ctx: RequestContext) -> pb.WaitResponse:
        proc = self._container(req.id).process(req.exec_id)
        await proc.exited.wait()
        return pb.WaitResponse(exit_status=proc.exit_status, exited_at=proc.exited_at)

    async def pids(self, req: pb.PidsRequest, ctx: RequestContext) -> pb.PidsResponse:
        container = self._container(req.id)
        exec_of = {p.pid: p.exec_id for p in container.execs.values() if p.pid}
        from pycontainerd import typeurl

        processes = []
        for pid in await container.runc.ps(req.id):
            info = task_types.ProcessInfo(pid=pid)
            if pid in exec_of:
                info.info.CopyFrom(
                    typeurl.marshal_any(oci_pb2.ProcessDetails(exec_id=exec_of[pid]))
                )
            processes.append(info)
        return pb.PidsResponse(processes=processes)

    async def stats(self, req: pb.StatsRequest, ctx: RequestContext) -> pb.StatsResponse:
        container = self._container(req.id)
        # Lazy: the cgroup reader and its proto module are only needed when asked.
        from pycontainerd import typeurl
        from pycontainerd.shim import metrics

        pid = container.init.pid
        if not pid:
            raise errdefs.FailedPrecondition(f"task {req.id} has no running init process")
        stats = await asyncio.to_thread(metrics.collect_for_pid, pid)
        return pb.StatsResponse(stats=typeurl.marshal_any(stats))

    async def connect(self, req: pb.ConnectRequest, ctx: RequestContext) -> pb.ConnectResponse:
        container = self.containers.get(req.id)
        return pb.ConnectResponse(
            shim_pid=os.getpid(), task_pid=container.init.pid if container else 0
        )

    # -- control ---------------------------------------------------------------------

    async def kill(self, req: pb.KillRequest, ctx: RequestContext) -> empty_pb2.Empty:
        container = self._container(req.id)
        proc = container.process(req.exec_id)
        if proc.exited.is_set():
            raise errdefs.NotFound("process already finished")
        if req.exec_id:
            if not proc.pid:
                raise errdefs.FailedPrecondition(f"process {proc.id} is not started")
            try:
                os.kill(proc.pid, req.signal)
            except ProcessLookupError:
                raise errdefs.NotFound("process already finished") from None
        else:
            await container.runc.kill(req.id, req.signal or signals.SIGTERM, req.all)
        return empty_pb2.Empty()

    async def pause(self, req: pb.PauseRequest, ctx: RequestContext) -> empty_pb2.Empty:
        container = self._container(req.id)
        await container.runc.pause(req.id)
        container.init.status = states.PAUSED
        self._publish(container.namespace, events.TaskPaused(container_id=req.id))
        return empty_pb2.Empty()

    async def resume(self, req: pb.ResumeRequest, ctx: RequestContext) -> empty_pb2.Empty:
        container = self._container(req.id)
        await container.runc.resume(req.id)
        container.init.status = states.RUNNING
        self._publish(container.namespace, events.TaskResumed(container_id=req.id))
        return empty_pb2.Empty()

    async def update(self, req: pb.UpdateTaskRequest, ctx: RequestContext) -> empty_pb2.Empty:
        container = self._container(req.id)
        await container.runc.update(req.id, req.resources.value or b"{}")
        return empty_pb2.Empty()

    async def checkpoint(
        self, req: pb.CheckpointTaskRequest, ctx: RequestContext
    ) -> empty_pb2.Empty:
        container = self._container(req.id)
        options = oci_pb2.CheckpointOptions()
        if req.HasField("options"):
            options.ParseFromString(req.options.value)
        image = options.image_path or req.path
        await container.runc.run(
            checkpoint_args(req.id, image, options.work_path, leave_running=not options.exit)
        )
        if options.exit:
            container.init.status = states.STOPPED
        return empty_pb2.Empty()

    async def resize_pty(self, req: pb.ResizePtyRequest, ctx: RequestContext) -> empty_pb2.Empty:
        proc = self._container(req.id).process(req.exec_id)
        if proc.console is not None:
            from pycontainerd.shim.console import Console

            assert isinstance(proc.console, Console)
            proc.console.resize(req.width, req.height)
        return empty_pb2.Empty()

    async def close_io(self, req: pb.CloseIORequest, ctx: RequestContext) -> empty_pb2.Empty:
        proc = self._container(req.id).process(req.exec_id)
        if req.stdin:
            if proc.io is not None:
                proc.io.close_stdin()
            if proc.console is not None:
                from pycontainerd.shim.console import Console

                assert isinstance(proc.console, Console)
                proc.console.close_stdin()
        return empty_pb2.Empty()

    async def shutdown(self, req: pb.ShutdownRequest, ctx: RequestContext) -> empty_pb2.Empty:
        self._leave_if_idle()
        return empty_pb2.Empty()


def _delete_response(proc: Process) -> pb.DeleteResponse:
    return pb.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status, exited_at=proc.exited_at)


def _close_process(proc: Process) -> None:
    if proc.io is not None:
        proc.io.close()
    if proc.console is not None:
        from pycontainerd.shim.console import Console

        assert isinstance(proc.console, Console)
        proc.console.close()


def _mount_rootfs(mounts: list[object], target: Path) -> None:
    from pycontainerd.snapshots.interface import Mount
    from pycontainerd.snapshots.mount import mount_all

    target.mkdir(mode=0o711, exist_ok=True)
    mount_all(
        [
            Mount(type=m.type, source=m.source, options=tuple(m.options))  # type: ignore[attr-defined]
            for m in mounts
        ],
        target,
    )


def _unmount_rootfs(target: Path) -> None:
    from pycontainerd.snapshots.mount import unmount_all

    with contextlib.suppress(FileNotFoundError):
        unmount_all(target)
