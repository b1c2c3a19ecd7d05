"""ContainersAPI and TasksAPI against small in-process fake services: what goes on the
wire (spec Any, rootfs mounts, FIFO paths, exec process Any) and what comes back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2

from pycontainerd.client import AsyncClient, cio
from pycontainerd.client.containers import (
    Container,
    chain_ids,
    container_from_proto,
    container_to_proto,
)
from pycontainerd.client.tasks import PROCESS_TYPE_URL, parse_signal
from pycontainerd.errdefs import InvalidArgument, NotFound
from pycontainerd.oci import spec as oci

from pycontainerd._api.containerd.services.containers.v1 import (  # isort: skip
    containers_pb2 as cpb,
    containers_pb2_grpc as cgrpc,
)
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2_grpc
from pycontainerd._api.containerd.types import mount_pb2
from pycontainerd._api.containerd.types.runc.options import oci_pb2 as runc_options
from pycontainerd._api.containerd.types.task import task_pb2


class FakeContainers(cgrpc.ContainersServicer):
    def __init__(self) -> None:
        self.store: dict[str, cpb.Container] = {}
        self.masks: list[list[str]] = []

    async def Create(self, request: Any, context: Any) -> Any:
        c = request.container
        if c.id in self.store:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"container {c.id}: already exists")
        c.created_at.FromNanoseconds(1)
        self.store[c.id] = c
        return cpb.CreateContainerResponse(container=c)

    async def Get(self, request: Any, context: Any) -> Any:
        if request.id not in self.store:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.id}: not found")
        return cpb.GetContainerResponse(container=self.store[request.id])

    async def List(self, request: Any, context: Any) -> Any:
        return cpb.ListContainersResponse(containers=list(self.store.values()))

    async def Update(self, request: Any, context: Any) -> Any:
        self.masks.append(list(request.update_mask.paths))
        current = self.store[request.container.id]
        for path in request.update_mask.paths:
            key = path.split(".", 1)[1]
            if key in request.container.labels:
                current.labels[key] = request.container.labels[key]
            else:
                current.labels.pop(key, None)
        return cpb.UpdateContainerResponse(container=current)

    async def Delete(self, request: Any, context: Any) -> Any:
        self.store.pop(request.id)
        return empty_pb2.Empty()


class FakeSnapshots(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self) -> None:
        self.removed: list[tuple[str, str]] = []

    async def Mounts(self, request: Any, context: Any) -> Any:
        mount = mount_pb2.Mount(type="overlay", source="overlay", options=[f"key={request.key}"])
        return snapshots_pb2.MountsResponse(mounts=[mount])

    async def Remove(self, request: Any, context: Any) -> Any:
        self.removed.append((request.snapshotter, request.key))
        return empty_pb2.Empty()


@dataclass
class FakeTasks(tasks_pb2_grpc.TasksServicer):
    requests: list[Any] = field(default_factory=list)

    async def Create(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        if request.container_id == "nope":
            await context.abort(grpc.StatusCode.NOT_FOUND, "container nope: not found")
        return tpb.CreateTaskResponse(container_id=request.container_id, pid=42)

    async def Start(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return tpb.StartResponse(pid=43 if request.exec_id else 42)

    async def Wait(self, request: Any, context: Any) -> Any:
        resp = tpb.WaitResponse(exit_status=3)
        resp.exited_at.FromNanoseconds(5)
        return resp

    async def Exec(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return empty_pb2.Empty()

    async def Kill(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return empty_pb2.Empty()

    async def Get(self, request: Any, context: Any) -> Any:
        if request.container_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "task missing: not found")
        return tpb.GetResponse(
            process=task_pb2.Process(
                id=request.exec_id or request.container_id, pid=42, status=task_pb2.STOPPED
            )
        )

    async def List(self, request: Any, context: Any) -> Any:
        return tpb.ListTasksResponse(
            tasks=[task_pb2.Process(id="c1", pid=42, status=task_pb2.RUNNING)]
        )

    async def ListPids(self, request: Any, context: Any) -> Any:
        details = runc_options.ProcessDetails(exec_id="e1")
        info = task_pb2.ProcessInfo(pid=43)
        info.info.Pack(details)
        return tpb.ListPidsResponse(processes=[task_pb2.ProcessInfo(pid=42), info])

    async def Delete(self, request: Any, context: Any) -> Any:
        resp = tpb.DeleteResponse(id=request.container_id, pid=42, exit_status=3)
        resp.exited_at.FromNanoseconds(5)
        return resp

    async def DeleteProcess(self, request: Any, context: Any) -> Any:
        return tpb.DeleteResponse(id=request.exec_id, pid=43, exit_status=0)


@dataclass
class Fakes:
    client: AsyncClient
    containers: FakeContainers
    snapshots: FakeSnapshots
    tasks: FakeTasks


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    server = grpc.aio.server()
    f = Fakes(AsyncClient(str(tmp_path / "s.sock")), FakeContainers(), FakeSnapshots(), FakeTasks())
    cgrpc.add_ContainersServicer_to_server(f.containers, server)
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(f.snapshots, server)
    tasks_pb2_grpc.add_TasksServicer_to_server(f.tasks, server)
    server.add_insecure_port(f"unix://{tmp_path / 's.sock'}")
    await server.start()
    try:
        yield f
    finally:
        await f.client.close()
        await server.stop(None)


def test_chain_ids() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64

    assert chain_ids([a]) == [a]
    expected = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b]) == [a, expected]


def test_container_proto_round_trip() -> None:
    spec = oci.generate_spec("ns", "c1", oci.with_process_args("true"))
    c = Container(
        "c1", image="img", labels={"a": "b"}, spec=spec, snapshotter="overlayfs", snapshot_key="c1"
    )
    msg = container_to_proto(c)
    assert msg.spec.type_url == oci.SPEC_TYPE_URL
    assert msg.runtime.name == "io.containerd.runc.v2"
    back = container_from_proto(msg)
    assert back.spec == spec and back.labels == {"a": "b"} and back.snapshot_key == "c1"


def test_parse_signal() -> None:
    assert parse_signal("9") == 9 and parse_signal("KILL") == 9 and parse_signal("sigterm") == 15
    with pytest.raises(InvalidArgument):
        parse_signal("SIGNOPE")


async def test_containers_crud(fakes: Fakes) -> None:
    api = fakes.client.containers
    spec = oci.generate_spec("default", "c1", oci.with_process_args("sh"))
    made = await api.create(
        "c1", image="img", spec=spec, snapshotter="overlayfs", snapshot_key="c1", labels={"x": "1"}
    )
    assert made.created_at_ns == 1 and made.spec == spec
    stored = fakes.containers.store["c1"]
    assert json.loads(stored.spec.value) == spec
    assert [c.id for c in await api.list()] == ["c1"]
    assert (await api.get("c1")).image == "img"
    labels = await api.set_labels("c1", {"x": "", "y": "2"})
    assert labels == {"y": "2"}
    assert fakes.containers.masks == [["labels.x", "labels.y"]]
    await api.delete("c1")
    assert fakes.snapshots.removed == [("overlayfs", "c1")]
    with pytest.raises(NotFound):
        await api.get("c1")


async def test_task_lifecycle_on_the_wire(fakes: Fakes, tmp_path: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_process_args("sh"))
    await fakes.client.containers.create(
        "c1", spec=spec, snapshotter="overlayfs", snapshot_key="k1"
    )
    task = await fakes.client.tasks.create("c1", io=cio.log_uri("/var/log/c1"))
    create = fakes.tasks.requests[0]
    assert task.pid == 42
    assert [m.options[0] for m in create.rootfs] == ["key=k1"]
    assert create.stdout == create.stderr == "file:///var/log/c1" and create.stdin == ""
    assert await task.start() == 42
    status = await task.wait()
    assert (status.code, status.exited_at_ns) == (3, 5)
    proc = await task.exec("e1", {"args": ["ls"], "cwd": "/"}, cio.null_io())
    exec_req = fakes.tasks.requests[-1]
    assert exec_req.exec_id == "e1" and exec_req.spec.type_url == PROCESS_TYPE_URL
    assert json.loads(exec_req.spec.value) == {"args": ["ls"], "cwd": "/"}
    assert await proc.start() == 43
    await task.kill("SIGKILL", all=True)
    kill = fakes.tasks.requests[-1]
    assert (kill.signal, kill.all, kill.exec_id) == (9, True, "")
    assert [(p.pid, p.exec_id) for p in await task.pids()] == [(42, ""), (43, "e1")]
    assert (await proc.delete()).code == 0
    assert (await task.delete()).code == 3
    listed = await fakes.client.tasks.list()
    assert [(t.id, t.container_id, t.status) for t in listed] == [("c1", "c1", "RUNNING")]
    with pytest.raises(NotFound):
        await fakes.client.tasks.get("missing")


async def test_task_create_failure_closes_fifos(fakes: Fakes, tmp_path: Path) -> None:
    fifo_root = tmp_path / "fifo"
    with pytest.raises(NotFound):
        await fakes.client.tasks.create(
            Container("nope", snapshotter="overlayfs"), io=cio.stdio(fifo_dir=fifo_root)
        )
    # the FIFOs made for the task went with the failed create
    assert list(fifo_root.iterdir()) == []


def test_user_files_from_layers() -> None:
    from pycontainerd.client.containers import _etc_files
    from pycontainerd.images import build

    File = build.File
    layer = build.make_layer({"etc/passwd": File(b"a:x:1:1::/:/bin/sh\n"), "etc/.wh.group": File()})
    assert _etc_files(layer.gz, "application/vnd.oci.image.layer.v1.tar+gzip") == {
        "etc/passwd": "a:x:1:1::/:/bin/sh\n",
        "etc/group": None,
    }
    opaque = build.make_layer({"etc/.wh..wh..opq": File(), "etc/group": File(b"g:x:2:\n")})
    assert _etc_files(opaque.tar, "application/vnd.oci.image.layer.v1.tar") == {
        "etc/passwd": None,
        "etc/group": "g:x:2:\n",
    }
    assert _etc_files(build.make_layer({"bin/x": File(b"")}).gz, "") == {}
