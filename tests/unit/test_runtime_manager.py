"""The shim manager against a fake shim: a shell script for the binary contract and an
in-process fake of the ttrpc connection (no root, no runc)."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, empty_pb2, message

from pycontainerd import namespaces
from pycontainerd._api.containerd.events import task_pb2 as events_pb
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd._api.containerd.types import mount_pb2
from pycontainerd._api.containerd.types.task import task_pb2
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unknown,
)
from pycontainerd.events.exchange import Envelope, Exchange
from pycontainerd.runtime import IO, CreateOpts
from pycontainerd.runtime.v2 import manager as managermod
from pycontainerd.runtime.v2.manager import ShimManager

SPEC = json.dumps({"ociVersion": "1.0.2"}).encode()
NS = "testns"


class FakeShim:
    """The task service of one fake shim process."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, message.Message, dict[str, str]]] = []
        self.clients: list[FakeClient] = []
        self.fail_create: str | None = None
        self.status = task_pb2.CREATED

    def handle(self, method: str, req: Any, metadata: dict[str, str]) -> message.Message:
        self.requests.append((method, req, metadata))
        if method == "Create":
            if self.fail_create:
                raise InvalidArgument(self.fail_create)
            return shim_pb2.CreateTaskResponse(pid=4242)
        if method == "Connect":
            return shim_pb2.ConnectResponse(shim_pid=1, task_pid=4242)
        if method == "State":
            return shim_pb2.StateResponse(id=req.id, pid=4242, status=self.status)
        if method == "Delete":
            if self.status == task_pb2.RUNNING:
                raise FailedPrecondition("cannot delete a running task")
            return shim_pb2.DeleteResponse(pid=4242, exit_status=7)
        return empty_pb2.Empty()

    def die(self) -> None:
        for client in list(self.clients):
            client.lose()

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.requests]


SHIMS: dict[str, FakeShim] = {}


class FakeClient:
    """Stands in for pycontainerd.ttrpc.client.Client."""

    def __init__(self, shim: FakeShim) -> None:
        self._shim = shim
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        shim.clients.append(self)

    @classmethod
    async def connect(cls, path: str) -> FakeClient:
        shim = SHIMS.get(path)
        if shim is None:
            raise Unavailable(f"connect {path}: connection refused")
        return cls(shim)

    async def call(
        self,
        service: str,
        method: str,
        request: message.Message,
        response_type: type[message.Message],
        *,
        metadata: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> message.Message:
        assert service == "containerd.task.v2.Task"
        if self._closed:
            raise Unavailable("ttrpc: closed")
        result = self._shim.handle(method, request, dict(metadata or {}))
        assert isinstance(result, response_type)
        return result

    def add_close_callback(self, fn: Callable[[], None]) -> None:
        self._callbacks.append(fn)

    def lose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shim.clients.remove(self)
        for fn in self._callbacks:
            fn()

    async def close(self) -> None:
        self.lose()

    async def wait_closed(self) -> None:
        return None


def write_shim_script(tmp_path: Path, start_output: str | None = None) -> Path:
    """A shim binary: ``start`` prints unix://<tmp>/<id>.sock and writes ``address``;
    ``delete`` records its argv and prints a DeleteResponse (pid 99, status 137)."""
    out = tmp_path / "delete-response"
    out.write_bytes(shim_pb2.DeleteResponse(pid=99, exit_status=137).SerializeToString())
    script = tmp_path / "bin" / "containerd-shim-fake-v2"
    script.parent.mkdir(exist_ok=True)
    printed = start_output or f"unix://{tmp_path}/$ID.sock"
    script.write_text(
        f"""#!/bin/sh
ID=""
while [ $# -gt 0 ]; do
  case "$1" in
    -id) ID="$2"; shift 2;;
    -namespace|-address|-publish-binary|-bundle) shift 2;;
    start) echo "{printed}"; printf '%s' "unix://{tmp_path}/$ID.sock" > address; exit 0;;
    delete) echo "$PWD" >> {tmp_path}/deleted; cat {out}; exit 0;;
    *) shift;;
  esac
done
exit 1
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def shim_script(tmp_path: Path) -> Path:
    return write_shim_script(tmp_path)


@pytest.fixture(autouse=True)
def fake_ttrpc(monkeypatch: pytest.MonkeyPatch) -> None:
    SHIMS.clear()
    monkeypatch.setattr(managermod, "Client", FakeClient)


def make_manager(tmp_path: Path, exchange: Exchange, shim: Path) -> ShimManager:
    return ShimManager(
        root=tmp_path / "root",
        state=tmp_path / "state",
        address=str(tmp_path / "d.sock"),
        ttrpc_address=str(tmp_path / "d.sock.ttrpc"),
        publish_binary="/bin/true",
        events=exchange,
        runtimes={"io.containerd.fake.v2": str(shim)},
    )


def opts(**kw: Any) -> CreateOpts:
    base: dict[str, Any] = {"spec": SPEC, "runtime": "io.containerd.fake.v2"}
    base.update(kw)
    return CreateOpts(**base)


def register_shim(tmp_path: Path, id_: str) -> FakeShim:
    shim = FakeShim()
    SHIMS[f"{tmp_path}/{id_}.sock"] = shim
    return shim


@pytest.fixture
async def exchange() -> AsyncIterator[Exchange]:
    yield Exchange()


async def collect(exchange: Exchange, count: int) -> list[Envelope]:
    got: list[Envelope] = []
    async with exchange.subscribe() as stream:
        async for env in stream:
            got.append(env)
            if len(got) == count:
                break
    return got


async def test_create_starts_shim_and_creates_task(
    tmp_path: Path, exchange: Exchange, shim_script: Path
) -> None:
    shim = register_shim(tmp_path, "c1")
    m = make_manager(tmp_path, exchange, shim_script)
    rootfs = (mount_pb2.Mount(type="overlay", source="overlay", target="x", options=["ro"]),)
    task_opt = any_pb2.Any(type_url="task", value=b"1")
    with namespaces.with_namespace(NS):
        task, pid = await m.create(
            "c1",
            opts(
                rootfs=rootfs,
                io=IO("/in", "/out", "/err", True),
                runtime_options=any_pb2.Any(type_url="runtime", value=b"0"),
                task_options=task_opt,
            ),
        )
        assert pid == 4242
        assert m.get("c1") is task
        assert m.tasks() == [task]
    with namespaces.with_namespace("other"):
        assert m.tasks() == []
        with pytest.raises(NotFound):
            m.get("c1")
    bundle = tmp_path / "state" / NS / "c1"
    assert (bundle / "config.json").read_bytes() == SPEC
    assert (bundle / "shim-binary-path").read_text() == str(shim_script)
    method, req, metadata = shim.requests[0]
    assert method == "Create" and metadata == {"containerd-namespace-ttrpc": NS}
    assert req.bundle == str(bundle) and req.id == "c1"
    assert [(r.type, r.source, r.target, list(r.options)) for r in req.rootfs] == [
        ("overlay", "overlay", "", ["ro"])
    ]
    assert (req.stdin, req.stdout, req.stderr, req.terminal) == ("/in", "/out", "/err", True)
    assert req.options == task_opt
    await m.aclose()


async def test_create_twice_is_already_exists(
    tmp_path: Path, exchange: Exchange, shim_script: Path
) -> None:
    register_shim(tmp_path, "c1")
    m = make_manager(tmp_path, exchange, shim_script)
    with namespaces.with_namespace(NS):
        await m.create("c1", opts())
        with pytest.raises(AlreadyExists):
            await m.create("c1", opts())
    await m.aclose()


async def test_failed_create_passes_error_and_cleans_up(
    tmp_path: Path, exchange: Exchange, shim_script: Path
) -> None:
    shim = register_shim(tmp_path, "c1")
    shim.fail_create = 'runc create failed: exec: "/nope": no such file or directory'
    m = make_manager(tmp_path, exchange, shim_script)
    with namespaces.with_namespace(NS):
        with pytest.raises(InvalidArgument) as info:
            await m.create("c1", opts())
        assert m.tasks() == []
    assert 'exec: "/nope": no such file or directory' in str(info.value)
    assert not (tmp_path / "state" / NS / "c1").exists()
    assert not (tmp_path / "root" / NS / "c1").exists()
    assert shim.methods() == ["Create", "Delete", "Shutdown"]
    assert shim.clients == []


async def test_unknown_runtime(tmp_path: Path, exchange: Exchange, shim_script: Path) -> None:
    m = make_manager(tmp_path, exchange, shim_script)
    with namespaces.with_namespace(NS):
        with pytest.raises(Unknown) as info:
            await m.create("c1", opts(runtime="io.containerd.nosuch.v1"))
        with pytest.raises(InvalidArgument):
            await m.create("c1", opts(runtime="nodots"))
    assert 'binary not installed "containerd-shim-nosuch-v1"' in str(info.value)
    assert not (tmp_path / "state" / NS / "c1").exists()


async def test_garbage_start_output(tmp_path: Path, exchange: Exchange) -> None:
    script = write_shim_script(tmp_path, start_output="I am not an address")
    m = make_manager(tmp_path, exchange, script)
    with namespaces.with_namespace(NS), pytest.raises(InvalidArgument) as info:
        await m.create("c1", opts())
    assert "I am not an address" in str(info.value)
    assert not (tmp_path / "state" / NS / "c1").exists()


async def test_dead_shim_is_cleaned_up_and_exit_published(
    tmp_path: Path, exchange: Exchange, shim_script: Path
) -> None:
    shim = register_shim(tmp_path, "c1")
    m = make_manager(tmp_path, exchange, shim_script)
    with namespaces.with_namespace(NS):
        await m.create("c1", opts())
    bundle = tmp_path / "state" / NS / "c1"
    waiter = asyncio.create_task(collect(exchange, 2))
    await asyncio.sleep(0)  # let the subscription register
    shim.die()
    exit_env, delete_env = await asyncio.wait_for(waiter, 10)
    assert (exit_env.topic, exit_env.namespace) == ("/tasks/exit", NS)
    exit_ev = events_pb.TaskExit.FromString(exit_env.event.value)
    assert (exit_ev.container_id, exit_ev.id, exit_ev.pid, exit_ev.exit_status) == (
        "c1",
        "c1",
        99,
        137,
    )
    assert delete_env.topic == "/tasks/delete"
    assert (tmp_path / "deleted").read_text().split() == [str(bundle)]
    assert not bundle.exists()
    with namespaces.with_namespace(NS):
        assert m.tasks() == []


async def test_delete_stopped_task(tmp_path: Path, exchange: Exchange, shim_script: Path) -> None:
    shim = register_shim(tmp_path, "c1")
    m = make_manager(tmp_path, exchange, shim_script)
    with namespaces.with_namespace(NS):
        await m.create("c1", opts())
        shim.status = task_pb2.RUNNING
        with pytest.raises(FailedPrecondition):
            await m.delete("c1")
        assert len(m.tasks()) == 1
        shim.status = task_pb2.STOPPED
        exit_ = await m.delete("c1")
        assert (exit_.pid, exit_.status) == (4242, 7)
        assert m.tasks() == []
        with pytest.raises(NotFound):
            await m.delete("c1")
    assert shim.methods()[-2:] == ["Delete", "Shutdown"]
    assert not (tmp_path / "state" / NS / "c1").exists()
    await m.aclose()  # (waits for the background removal of the renamed copies)
    assert list((tmp_path / "state" / NS).iterdir()) == []
    assert not (tmp_path / "deleted").exists()  # no dead-shim clean-up for a delete


async def test_reload_adopts_live_shims_and_cleans_dead_ones(
    tmp_path: Path, exchange: Exchange, shim_script: Path
) -> None:
    live = register_shim(tmp_path, "live")
    register_shim(tmp_path, "dead")
    m = make_manager(tmp_path, exchange, shim_script)
    with namespaces.with_namespace(NS):
        await m.create("live", opts())
        await m.create("dead", opts())
    await m.aclose()  # the daemon goes away; its shims stay
    del SHIMS[f"{tmp_path}/dead.sock"]  # ... and one of them dies meanwhile
    (tmp_path / "state" / NS / "empty").mkdir()
    (tmp_path / "state" / NS / ".gone.0123abcd").mkdir()  # a deletion cut short
    (tmp_path / "root" / NS / "stray").mkdir()

    m2 = make_manager(tmp_path, exchange, shim_script)
    await m2.load_existing()
    with namespaces.with_namespace(NS):
        assert [t.id for t in m2.tasks()] == ["live"]
        assert (await m2.get("live").state()).pid == 4242
    assert live.methods()[-2:] == ["Connect", "State"]
    assert (tmp_path / "deleted").read_text().split() == [str(tmp_path / "state" / NS / "dead")]
    assert sorted(p.name for p in (tmp_path / "state" / NS).iterdir()) == ["live"]
    assert sorted(p.name for p in (tmp_path / "root" / NS).iterdir()) == ["live"]
    await m2.aclose()


def test_resolve_runtime_path(
    tmp_path: Path, shim_script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_manager(tmp_path, Exchange(), shim_script)
    assert m.resolve_runtime_path("io.containerd.fake.v2") == str(shim_script)
    assert m.resolve_runtime_path(str(shim_script)) == str(shim_script)
    monkeypatch.setenv("PATH", str(shim_script.parent))
    unconfigured = make_manager(tmp_path, Exchange(), shim_script)
    unconfigured._runtimes.clear()
    assert unconfigured.resolve_runtime_path("io.containerd.fake.v2") == str(shim_script)
    with pytest.raises(NotFound):
        m.resolve_runtime_path(str(tmp_path / "missing"))
    with pytest.raises(InvalidArgument):
        m.resolve_runtime_path("")
    broken = ShimManager(
        root=tmp_path,
        state=tmp_path,
        address="a",
        ttrpc_address="b",
        publish_binary="c",
        events=Exchange(),
        runtimes={"io.containerd.x.v2": "no-such-shim-binary"},
    )
    with pytest.raises(NotFound, match="no-such-shim-binary"):
        broken.resolve_runtime_path("io.containerd.x.v2")
