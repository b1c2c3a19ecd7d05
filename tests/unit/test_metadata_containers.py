"""The container store, its GC edges, the namespace rule, and the Containers service."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from pycontainerd import typeurl
from pycontainerd._api.containerd.events import container_pb2 as events_pb
from pycontainerd._api.containerd.services.containers.v1 import containers_pb2 as pb
from pycontainerd._api.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc
from pycontainerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.errdefs_grpc import ContainerdInterceptor
from pycontainerd.events.exchange import Envelope, Exchange
from pycontainerd.gc import Node, Resource
from pycontainerd.metadata import containers as store
from pycontainerd.metadata import db as dbmod
from pycontainerd.metadata import gc as metagc
from pycontainerd.metadata import namespaces as nsstore
from pycontainerd.metadata.containers import Container, RuntimeInfo, TypedValue
from pycontainerd.metadata.db import DB
from pycontainerd.sansio import filters
from pycontainerd.services.containers.local import ContainersLocal
from pycontainerd.services.containers.service import ContainersService

SPEC = TypedValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1"}')
RUNC = RuntimeInfo("io.containerd.runc.v2")


def sample(cid: str = "c1", **kw: object) -> Container:
    fields: dict[str, object] = {
        "id": cid,
        "runtime": RUNC,
        "spec": SPEC,
        "labels": {"a": "1"},
        "image": "docker.io/library/busybox:latest",
        "snapshotter": "overlayfs",
        "snapshot_key": cid,
    }
    fields.update(kw)
    return Container(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[DB]:
    d = await DB.open(tmp_path / "meta.db")
    try:
        yield d
    finally:
        await d.aclose()


async def test_create_get_list_delete(db: DB) -> None:
    opts = TypedValue("containerd.runc.v1.Options", b"\x08\x01")
    made = sample(
        "b",
        runtime=RuntimeInfo("io.containerd.runc.v2", opts),
        extensions={"ext": TypedValue("t", b"\x00\xff")},
        sandbox="pod",
    )
    created = await db.update(lambda c: store.create(c, "ns", made))
    await db.update(lambda c: store.create(c, "ns", sample("a")))
    assert created.created_at is not None and created.created_at == created.updated_at
    got = await db.view(lambda c: store.get(c, "ns", "b"))
    assert got == created
    assert got.runtime.options == opts
    assert got.extensions == {"ext": TypedValue("t", b"\x00\xff")}
    assert got.sandbox == "pod" and got.spec == SPEC
    assert [c.id for c in await db.view(lambda c: store.list_all(c, "ns"))] == ["a", "b"]
    assert await db.view(lambda c: store.list_all(c, "other")) == []
    await db.update(lambda c: store.delete(c, "ns", "b"))
    with pytest.raises(NotFound, match='container "b" in namespace "ns": not found'):
        await db.view(lambda c: store.get(c, "ns", "b"))
    with pytest.raises(NotFound, match=r"^container b: not found$"):
        await db.update(lambda c: store.delete(c, "ns", "b"))
    with pytest.raises(NotFound, match='cannot delete container "x" in namespace "empty"'):
        await db.update(lambda c: store.delete(c, "empty", "x"))


async def test_create_validation_and_conflict(db: DB) -> None:
    await db.update(lambda c: store.create(c, "ns", sample()))
    with pytest.raises(AlreadyExists, match=r'^container "c1": already exists$'):
        await db.update(lambda c: store.create(c, "ns", sample()))
    cases = [
        (sample("bad id"), r"create container failed validation: container\.ID: identifier"),
        (sample("x", runtime=RuntimeInfo("")), r"container\.Runtime\.Name must be set"),
        (sample("x", spec=None), r"container\.Spec must be set"),
        (
            sample("x", snapshotter=""),
            r"container\.Snapshotter must be set if container\.SnapshotKey is set",
        ),
        (sample("x", extensions={"": SPEC}), "Extension keys must not be zero-length"),
        (sample("x", labels={"k": "v" * 5000}), r"containers\.Labels: label key and value"),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            await db.update(lambda c, bad=bad: store.create(c, "ns", bad))  # type: ignore[misc]
    # failed creates leave nothing behind
    assert [c.id for c in await db.view(lambda c: store.list_all(c, "ns"))] == ["c1"]


async def test_update_field_mask(db: DB) -> None:
    first = await db.update(lambda c: store.create(c, "ns", sample(labels={"a": "1", "b": "2"})))
    change = sample(
        labels={"a": "9", "c": "3"},
        image="other",
        spec=TypedValue("t", b"new"),
        extensions={"e": TypedValue("x", b"1")},
    )
    updated = await db.update(lambda c: store.update(c, "ns", change, ["labels.a", "labels.b"]))
    assert updated.labels == {"a": "9"}  # b removed: absent from the request
    assert updated.image == "docker.io/library/busybox:latest" and updated.spec == SPEC
    assert updated.created_at == first.created_at
    assert updated.updated_at is not None and first.updated_at is not None
    assert updated.updated_at >= first.updated_at

    updated = await db.update(
        lambda c: store.update(c, "ns", change, ["image", "spec", "extensions.e"])
    )
    assert (updated.image, updated.spec) == ("other", TypedValue("t", b"new"))
    assert updated.extensions == {"e": TypedValue("x", b"1")}
    # a key the request lacks is stored as the zero Any, as containerd does
    updated = await db.update(lambda c: store.update(c, "ns", change, ["extensions.z"]))
    assert updated.extensions["z"] == TypedValue("", b"")

    for path in ("runtime", "snapshotter", "id", "sandbox"):
        with pytest.raises(InvalidArgument, match=f'cannot update "{path}" field on "c1"'):
            await db.update(lambda c, p=path: store.update(c, "ns", change, [p]))  # type: ignore[misc]
    with pytest.raises(InvalidArgument, match=r"update failed validation: container\.Spec"):
        await db.update(lambda c: store.update(c, "ns", sample(spec=None), ["spec"]))


async def test_update_without_mask_replaces_mutable_fields(db: DB) -> None:
    await db.update(lambda c: store.create(c, "ns", sample()))
    whole = sample(labels={"z": "1"}, image="img2", snapshot_key="k2", sandbox="ignored")
    updated = await db.update(lambda c: store.update(c, "ns", whole, []))
    assert (updated.labels, updated.image, updated.snapshot_key) == ({"z": "1"}, "img2", "k2")
    assert updated.sandbox == ""
    with pytest.raises(InvalidArgument, match=r"container\.Snapshotter field is immutable"):
        await db.update(lambda c: store.update(c, "ns", sample(snapshotter="native"), []))
    with pytest.raises(InvalidArgument, match=r"container\.Runtime\.Name field is immutable"):
        await db.update(
            lambda c: store.update(c, "ns", sample(runtime=RuntimeInfo("io.other")), [])
        )
    with pytest.raises(InvalidArgument, match="must specify a container id"):
        await db.update(lambda c: store.update(c, "ns", sample(""), []))
    with pytest.raises(NotFound, match=r'^container "nope": not found$'):
        await db.update(lambda c: store.update(c, "ns", sample("nope"), []))
    with pytest.raises(NotFound, match='cannot update container "c1" in namespace "x"'):
        await db.update(lambda c: store.update(c, "x", sample(), []))


def test_filter_fields() -> None:
    c = sample(labels={"app.kind": "web"})

    def match(text: str) -> bool:
        return filters.parse_all([text]).match(store.container_fields(c))

    assert match("id==c1")
    assert match("runtime.name==io.containerd.runc.v2")
    assert match("image~=busybox")
    assert match("labels.app.kind==web")
    assert match("labels.app.kind")
    assert not match("labels.nope")
    assert not match("snapshotter==overlayfs")
    assert not match("id==c2")


async def test_namespace_with_containers_cannot_be_deleted(db: DB) -> None:
    await db.update(lambda c: store.create(c, "ns", sample()))
    with pytest.raises(FailedPrecondition, match="it still has containers"):
        await db.update(lambda c: nsstore.delete(c, "ns"))
    await db.update(lambda c: store.delete(c, "ns", "c1"))
    await db.update(lambda c: nsstore.delete(c, "ns"))


def _insert_snapshot(conn: sqlite3.Connection, ns: str, sn: str, key: str) -> None:
    conn.execute(
        "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, kind, labels, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, '', 2, '{}', 0, 0)",
        (ns, sn, key, f"1/{key}"),
    )


async def test_gc_keeps_what_a_container_references(db: DB) -> None:
    labels = {
        "containerd.io/gc.ref.content.x": "sha256:" + "a" * 64,
        "containerd.io/gc.ref.snapshot.native": "extra",
    }

    def setup(conn: sqlite3.Connection) -> None:
        store.create(conn, "ns", sample(labels=labels))
        for key in ("c1", "stray"):
            _insert_snapshot(conn, "ns", "overlayfs", key)
        _insert_snapshot(conn, "ns", "native", "extra")

    await db.update(setup)
    stats = metagc.Stats()
    swept = await db.update(lambda c: metagc.mark_and_sweep(c, stats))
    assert swept.live_snapshots == {"overlayfs": {"1/c1"}, "native": {"1/extra"}}
    refs = await db.view(lambda c: list(metagc.references(c, Node(Resource.CONTAINER, "ns", "c1"))))
    assert set(refs) == {
        Node(Resource.SNAPSHOT, "ns", "overlayfs/c1"),
        Node(Resource.SNAPSHOT, "ns", "native/extra"),
        Node(Resource.CONTENT, "ns", "sha256:" + "a" * 64),
    }
    await db.update(lambda c: store.delete(c, "ns", "c1"))
    swept = await db.update(lambda c: metagc.mark_and_sweep(c, stats))
    assert swept.live_snapshots == {}


# --- the Containers service, in process over a unix socket ---------------------------


@pytest.fixture
async def served(db: DB, tmp_path: Path) -> AsyncIterator[tuple[pb_grpc.ContainersStub, Exchange]]:
    exchange = Exchange()
    server = grpc.aio.server(interceptors=[ContainerdInterceptor()])
    ContainersService(ContainersLocal(db, exchange)).register(server)
    address = f"unix://{tmp_path / 'c.sock'}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield pb_grpc.ContainersStub(channel), exchange
    finally:
        await server.stop(None)


MD = (("containerd-namespace", "ns"),)


def _pb_container(cid: str = "c1") -> pb.Container:
    return pb.Container(
        id=cid,
        labels={"a": "1"},
        image="img",
        runtime=pb.Container.Runtime(
            name="io.containerd.runc.v2", options=any_pb2.Any(type_url="o", value=b"1")
        ),
        spec=any_pb2.Any(type_url=SPEC.type_url, value=SPEC.value),
        snapshotter="overlayfs",
        snapshot_key=cid,
        extensions={"e": any_pb2.Any(type_url="x", value=b"2")},
    )


async def _next_event(events: AsyncIterator[Envelope]) -> tuple[str, object]:
    env = await asyncio.wait_for(anext(events), 5)
    return env.topic, typeurl.unmarshal_any(env.event)


async def test_service_round_trip_and_events(
    served: tuple[pb_grpc.ContainersStub, Exchange],
) -> None:
    stub, exchange = served
    async with exchange.subscribe() as events:
        created = (
            await stub.Create(pb.CreateContainerRequest(container=_pb_container()), metadata=MD)
        ).container
        topic, ev = await _next_event(events)
        assert topic == "/containers/create"
        assert isinstance(ev, events_pb.ContainerCreate)
        assert (ev.id, ev.image, ev.runtime.name) == ("c1", "img", "io.containerd.runc.v2")
        assert ev.runtime.options.type_url == "o"

        expected = _pb_container()
        expected.created_at.CopyFrom(created.created_at)
        expected.updated_at.CopyFrom(created.updated_at)
        assert created == expected
        got = (await stub.Get(pb.GetContainerRequest(id="c1"), metadata=MD)).container
        assert got == created

        await stub.Create(pb.CreateContainerRequest(container=_pb_container("c2")), metadata=MD)
        await _next_event(events)
        listed = await stub.List(pb.ListContainersRequest(filters=["id==c2"]), metadata=MD)
        assert [c.id for c in listed.containers] == ["c2"]
        streamed = [
            m.container.id async for m in stub.ListStream(pb.ListContainersRequest(), metadata=MD)
        ]
        assert streamed == ["c1", "c2"]

        change = pb.Container(id="c1", labels={"b": "2"})
        updated = (
            await stub.Update(
                pb.UpdateContainerRequest(
                    container=change, update_mask=field_mask_pb2.FieldMask(paths=["labels.b"])
                ),
                metadata=MD,
            )
        ).container
        assert dict(updated.labels) == {"a": "1", "b": "2"}
        topic, ev = await _next_event(events)
        assert topic == "/containers/update"
        assert isinstance(ev, events_pb.ContainerUpdate)
        assert dict(ev.labels) == {"a": "1", "b": "2"} and ev.snapshot_key == "c1"

        await stub.Delete(pb.DeleteContainerRequest(id="c1"), metadata=MD)
        topic, ev = await _next_event(events)
        assert topic == "/containers/delete"
        assert isinstance(ev, events_pb.ContainerDelete) and ev.id == "c1"


async def test_service_error_codes(served: tuple[pb_grpc.ContainersStub, Exchange]) -> None:
    stub, _ = served
    await stub.Create(pb.CreateContainerRequest(container=_pb_container()), metadata=MD)
    calls = [
        (
            stub.Create(pb.CreateContainerRequest(container=_pb_container()), metadata=MD),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (stub.Get(pb.GetContainerRequest(id="nope"), metadata=MD), grpc.StatusCode.NOT_FOUND),
        (stub.Delete(pb.DeleteContainerRequest(id="nope"), metadata=MD), grpc.StatusCode.NOT_FOUND),
        (
            stub.Update(pb.UpdateContainerRequest(container=pb.Container()), metadata=MD),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            stub.List(pb.ListContainersRequest(filters=["id=="]), metadata=MD),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (stub.Get(pb.GetContainerRequest(id="c1")), grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for call, code in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == code, info.value.details()


async def test_schema_v3_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version, script in enumerate(dbmod.MIGRATIONS[:3], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO namespaces(name, created_at) VALUES ('ns', 0)")
    conn.commit()
    conn.close()
    db = await DB.open(path)
    try:
        await db.update(lambda c: store.create(c, "ns", sample()))
        assert [c.id for c in await db.view(lambda c: store.list_all(c, "ns"))] == ["c1"]
    finally:
        await db.aclose()


def test_times_round_trip_exactly() -> None:
    ns = 1_764_336_000_123_456_789
    when = store._to_time(ns)
    assert when.tzinfo is not None and when.microsecond == 123_456
    assert store._to_ns(when) == ns - 789


def test_schema_stores_extensions_as_json(tmp_path: Path) -> None:
    # the on-disk shape is ours; check it stays readable JSON
    text = store._extensions_to_json({"k": TypedValue("t", b"\x01")})
    assert json.loads(text) == {"k": ["t", "AQ=="]}
    assert store._extensions_from_json(text) == {"k": TypedValue("t", b"\x01")}
