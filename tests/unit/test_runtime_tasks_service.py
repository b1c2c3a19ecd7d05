"""The Tasks service logic over a fake runtime and a fake container store."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from pycontainerd import namespaces
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2 as api
from pycontainerd._api.containerd.types import descriptor_pb2, mount_pb2
from pycontainerd._api.containerd.types.task import task_pb2
from pycontainerd.errdefs import InvalidArgument, NotFound, NotImplemented_, Unknown
from pycontainerd.runtime import CreateOpts, Exit
from pycontainerd.services.tasks import local as localmod
from pycontainerd.services.tasks.local import TasksLocal

NS = "ns1"


class FakeTask:
    def __init__(self, id_: str, state_error: Exception | None = None) -> None:
        self.id = id_
        self.namespace = NS
        self.state_error = state_error
        self.calls: list[tuple[str, Any]] = []

    async def state(self, exec_id: str = "") -> shim_pb2.StateResponse:
        self.calls.append(("state", exec_id))
        if self.state_error is not None:
            raise self.state_error
        if exec_id == "missing":
            raise NotFound(f"process {exec_id}")
        resp = shim_pb2.StateResponse(
            id=exec_id or self.id, pid=77, status=task_pb2.STOPPED, exit_status=3, stdout="/o"
        )
        resp.exited_at.CopyFrom(timestamp_pb2.Timestamp(seconds=10))
        return resp

    async def delete_process(self, exec_id: str = "") -> Exit:
        self.calls.append(("delete", exec_id))
        if exec_id == "missing":
            raise NotFound(f"process {exec_id} does not exist")
        return Exit(pid=78, status=1, timestamp_ns=2_000_000_000)

    async def kill(self, signal: int, all_: bool = False, exec_id: str = "") -> None:
        self.calls.append(("kill", (signal, all_, exec_id)))

    async def wait(self, exec_id: str = "") -> Exit:
        return Exit(pid=77, status=9, timestamp_ns=3_000_000_000)

    async def stats(self) -> any_pb2.Any:
        return any_pb2.Any(type_url="stats", value=self.id.encode())


class FakeRuntime:
    def __init__(self) -> None:
        self.live: dict[str, FakeTask] = {}
        self.created: list[tuple[str, CreateOpts]] = []

    def get(self, id_: str) -> FakeTask:
        if id_ not in self.live:
            raise NotFound(f"task {id_}")
        return self.live[id_]

    def tasks(self) -> list[FakeTask]:
        return list(self.live.values())

    async def create(self, id_: str, opts: CreateOpts) -> tuple[FakeTask, int]:
        self.created.append((id_, opts))
        self.live[id_] = FakeTask(id_)
        return self.live[id_], 4242

    async def delete(self, id_: str) -> Exit:
        del self.live[id_]
        return Exit(pid=77, status=3, timestamp_ns=10_000_000_000)


class FakeDB:
    async def view(self, fn: Callable[[Any], Any], *, point: bool = False) -> Any:
        return fn(None)


CONTAINERS: dict[tuple[str, str], Any] = {}


def fake_get(conn: object, ns: str, id_: str) -> Any:
    if (ns, id_) not in CONTAINERS:
        raise NotFound(f"container {id_!r}")
    return CONTAINERS[(ns, id_)]


def container(id_: str, spec: bytes | None = b"{}", options: Any = None) -> Any:
    c = SimpleNamespace(
        id=id_,
        runtime=SimpleNamespace(name="io.containerd.runc.v2", options=options),
        spec=SimpleNamespace(type_url="spec", value=spec) if spec is not None else None,
    )
    CONTAINERS[(NS, id_)] = c
    return c


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch) -> tuple[TasksLocal, FakeRuntime]:
    CONTAINERS.clear()
    monkeypatch.setattr(localmod, "containers", SimpleNamespace(get=fake_get))
    runtime = FakeRuntime()
    return TasksLocal(FakeDB(), runtime), runtime  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _namespace() -> Any:
    with namespaces.with_namespace(NS):
        yield


async def test_create_uses_the_container(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, runtime = tasks
    container("c1", b'{"ociVersion":"1.0.2"}', SimpleNamespace(type_url="rt", value=b"o"))
    resp = await local.Create(
        api.CreateTaskRequest(
            container_id="c1",
            rootfs=[mount_pb2.Mount(type="bind", source="/x")],
            stdout="/out",
            terminal=True,
        )
    )
    assert (resp.container_id, resp.pid) == ("c1", 4242)
    ((id_, opts),) = runtime.created
    assert id_ == "c1" and opts.spec == b'{"ociVersion":"1.0.2"}'
    assert opts.runtime == "io.containerd.runc.v2"
    assert opts.runtime_options == any_pb2.Any(type_url="rt", value=b"o")
    assert opts.task_options is None and opts.options == opts.runtime_options
    assert opts.io.stdout == "/out" and opts.io.terminal
    assert [m.source for m in opts.rootfs] == ["/x"]


async def test_create_with_runtime_path_and_task_options(
    tasks: tuple[TasksLocal, FakeRuntime],
) -> None:
    local, runtime = tasks
    container("c1")
    task_opts = any_pb2.Any(type_url="t", value=b"1")
    await local.Create(
        api.CreateTaskRequest(container_id="c1", runtime_path="/bin/shim", options=task_opts)
    )
    opts = runtime.created[0][1]
    assert opts.runtime == "/bin/shim" and opts.options == task_opts


async def test_create_errors(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, _ = tasks
    with pytest.raises(NotFound, match="container"):
        await local.Create(api.CreateTaskRequest(container_id="nope"))
    container("nospec", spec=None)
    with pytest.raises(InvalidArgument, match="no spec"):
        await local.Create(api.CreateTaskRequest(container_id="nospec"))
    container("c1")
    checkpoint = descriptor_pb2.Descriptor(digest="sha256:" + "0" * 64)
    with pytest.raises(NotImplemented_):
        await local.Create(api.CreateTaskRequest(container_id="c1", checkpoint=checkpoint))


async def test_get_reports_state_as_containerd(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, runtime = tasks
    container("c1")
    with pytest.raises(NotFound, match="task c1 not found"):
        await local.Get(api.GetRequest(container_id="c1"))
    runtime.live["c1"] = FakeTask("c1")
    p = (await local.Get(api.GetRequest(container_id="c1"))).process
    assert (p.container_id, p.id, p.pid, p.status, p.exit_status, p.stdout) == (
        "",
        "c1",
        77,
        task_pb2.STOPPED,
        3,
        "/o",
    )
    assert p.exited_at.seconds == 10
    p = (await local.Get(api.GetRequest(container_id="c1", exec_id="e1"))).process
    assert p.id == "e1"
    with pytest.raises(NotFound):
        await local.Get(api.GetRequest(container_id="c1", exec_id="missing"))


async def test_list_skips_gone_and_reports_unknown(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, runtime = tasks
    runtime.live["ok"] = FakeTask("ok")
    runtime.live["gone"] = FakeTask("gone", NotFound("shim is gone"))
    runtime.live["odd"] = FakeTask("odd", Unknown("boom"))
    listed = {t.id: t.status for t in (await local.List(api.ListTasksRequest())).tasks}
    assert listed == {"ok": task_pb2.STOPPED, "odd": task_pb2.UNKNOWN}


async def test_delete_and_delete_process(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, runtime = tasks
    container("c1")
    runtime.live["c1"] = task = FakeTask("c1")
    resp = await local.DeleteProcess(api.DeleteProcessRequest(container_id="c1", exec_id="e1"))
    assert (resp.id, resp.pid, resp.exit_status, resp.exited_at.seconds) == ("e1", 78, 1, 2)
    assert ("delete", "e1") in task.calls
    with pytest.raises(NotFound, match="process missing does not exist"):
        await local.DeleteProcess(api.DeleteProcessRequest(container_id="c1", exec_id="missing"))
    resp = await local.Delete(api.DeleteTaskRequest(container_id="c1"))
    assert (resp.id, resp.pid, resp.exit_status, resp.exited_at.seconds) == ("", 77, 3, 10)
    with pytest.raises(NotFound, match="task c1 not found"):
        await local.Delete(api.DeleteTaskRequest(container_id="c1"))


async def test_kill_exec_wait(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, runtime = tasks
    container("c1")
    runtime.live["c1"] = task = FakeTask("c1")
    await local.Kill(api.KillRequest(container_id="c1", signal=9, all=True))
    assert ("kill", (9, True, "")) in task.calls
    with pytest.raises(NotFound):
        await local.Kill(api.KillRequest(container_id="c1", exec_id="missing", signal=9))
    with pytest.raises(InvalidArgument, match="exec id cannot be empty"):
        await local.Exec(api.ExecProcessRequest(container_id="c1"))
    resp = await local.Wait(api.WaitRequest(container_id="c1"))
    assert (resp.exit_status, resp.exited_at.seconds) == (9, 3)
    with pytest.raises(NotImplemented_):
        await local.Checkpoint(api.CheckpointTaskRequest(container_id="c1"))


async def test_metrics_filters(tasks: tuple[TasksLocal, FakeRuntime]) -> None:
    local, runtime = tasks
    runtime.live["a"] = FakeTask("a")
    runtime.live["b"] = FakeTask("b")
    resp = await local.Metrics(api.MetricsRequest(filters=["id==b"]))
    assert [(m.id, m.data.value) for m in resp.metrics] == [("b", b"b")]
    assert len((await local.Metrics(api.MetricsRequest())).metrics) == 2
