"""Garbage collection rules, and the collector over a real database and store."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from pathlib import Path

import pytest

from pycontainerd import gc, leases, namespaces
from pycontainerd.content.local import LocalStore
from pycontainerd.gc import Node, Resource
from pycontainerd.metadata import images as imagestore
from pycontainerd.metadata import leases as leasestore
from pycontainerd.metadata.content import ContentStore
from pycontainerd.metadata.db import DB
from pycontainerd.metadata.gc import Collector
from pycontainerd.metadata.scheduler import Scheduler, SchedulerConfig, parse_duration


def test_label_refs() -> None:
    labels = {
        "containerd.io/gc.ref.content": "sha256:a",
        "containerd.io/gc.ref.content.l.0": "sha256:b",
        "containerd.io/gc.ref.content/x": "sha256:c",
        "containerd.io/gc.ref.contentious": "sha256:no",
        "containerd.io/gc.ref.snapshot.overlayfs": "key1",
        "containerd.io/gc.ref.snapshot.native/sub": "key2",
        "other": "sha256:no",
    }
    got = set(gc.label_refs("ns", labels))
    assert got == {
        Node(Resource.CONTENT, "ns", "sha256:a"),
        Node(Resource.CONTENT, "ns", "sha256:b"),
        Node(Resource.CONTENT, "ns", "sha256:c"),
        Node(Resource.SNAPSHOT, "ns", "overlayfs/key1"),
        Node(Resource.SNAPSHOT, "ns", "native/key2"),
    }


def test_mark_follows_refs_but_not_through_flat() -> None:
    edges = {
        Node(Resource.CONTENT, "n", "a"): [Node(Resource.CONTENT, "n", "b")],
        Node(Resource.CONTENT, "n", "b"): [Node(Resource.CONTENT, "n", "c")],
        Node(Resource.CONTENT, "n", "x"): [Node(Resource.CONTENT, "n", "y")],
    }
    roots = [Node(Resource.CONTENT, "n", "a"), Node(Resource.CONTENT_FLAT, "n", "x")]
    got = gc.mark(roots, lambda n: edges.get(n, []))
    assert {n.key for n in got} == {"a", "b", "c", "x"}


def test_expiry() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert gc.expired({gc.LABEL_EXPIRE: "2025-12-31T23:59:59Z"}, now)
    assert not gc.expired({gc.LABEL_EXPIRE: "2026-01-01T00:00:01+00:00"}, now)
    assert not gc.expired({gc.LABEL_EXPIRE: "garbage"}, now)
    assert not gc.expired({}, now)


def test_parse_duration() -> None:
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90
    assert parse_duration("0") == 0
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration("10 parsecs")


async def _write(store: ContentStore, data: bytes, labels: dict[str, str] | None = None) -> str:
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    w = await store.writer(f"ref-{dgst}", len(data), dgst)
    await w.write(data)
    await w.commit(len(data), dgst, labels)
    return dgst


async def test_collector_keeps_what_images_and_leases_reach(tmp_path: Path) -> None:
    db = await DB.open(tmp_path / "meta.db")
    backend = await LocalStore.open(tmp_path / "content")
    store = ContentStore(db, backend)
    try:
        with namespaces.with_namespace("n"):
            layer = await _write(store, b"layer")
            config = await _write(store, b"config")
            manifest = await _write(
                store,
                json.dumps({}).encode(),
                {
                    "containerd.io/gc.ref.content.l.0": layer,
                    "containerd.io/gc.ref.content.config": config,
                },
            )
            orphan = await _write(store, b"orphan")
            rooted = await _write(store, b"rooted", {"containerd.io/gc.root": "x"})
            await db.update(lambda c: leasestore.create(c, "n", "keep", {}))
            with leases.with_lease("keep"):
                leased = await _write(store, b"leased")
            img = imagestore.Image("img", imagestore.Descriptor("m", manifest, 2))
            await db.update(lambda c: imagestore.create(c, "n", img))
            # an ingest in progress is never collected
            w = await store.writer("busy", 0, "")
            await w.write(b"half")
            await w.close()

            stats = await Collector(db, store).collect()
            on_disk = {i.digest async for i in backend.walk()}
            assert on_disk == {layer, config, manifest, rooted, leased}
            assert orphan not in on_disk and stats.removed["blobs"] == 1
            assert (await store.status("busy")).offset == 4

            await db.update(lambda c: imagestore.delete(c, "n", "img"))
            await Collector(db, store).collect()
            on_disk = {i.digest async for i in backend.walk()}
            assert on_disk == {rooted, leased}
    finally:
        await backend.aclose()
        await db.aclose()


async def test_scheduler_runs_on_mutations_and_on_demand(tmp_path: Path) -> None:
    db = await DB.open(tmp_path / "meta.db")
    backend = await LocalStore.open(tmp_path / "content")
    store = ContentStore(db, backend)
    sched = Scheduler(
        db, Collector(db, store), SchedulerConfig(mutation_threshold=3, startup_delay="0")
    )
    sched.start()
    try:
        stats = await asyncio.wait_for(sched.schedule_and_wait(), 10)
        assert stats is not None
        before = sched.collections
        with namespaces.with_namespace("n"):
            for i in range(3):
                await _write(store, f"blob{i}".encode())
        # The commits cross the threshold (a write counts more than one mutation, so the
        # collection may start before the last commit); wait for the collection they
        # trigger, then one on demand, which sees everything.
        await asyncio.wait_for(sched.wait_for_collection(before), 10)
        await asyncio.wait_for(sched.schedule_and_wait(), 10)
        assert {i.digest async for i in backend.walk()} == set()
    finally:
        await sched.aclose()
        await backend.aclose()
        await db.aclose()
