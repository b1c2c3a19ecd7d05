"""Mark and sweep over the metadata database, then the backends.

One write transaction scans every namespace for roots (images, containers, leases,
live ingests, objects labelled gc.root), marks what they reach (rules
in ``pycontainerd.gc``) and deletes the unreached metadata: blob records, expired
ingests and expired leases. Because all metadata writes run on the database's single
thread, nothing can be added between the mark and the sweep. The content backend is
then swept of blobs no namespace records any more, and of ingests whose records went,
and each snapshotter of snapshots no record points to (children before parents);
``DB.gc_lock`` keeps stores from committing while that runs.
"""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from pycontainerd import gc
from pycontainerd.gc import Node, Resource
from pycontainerd.metadata.content import ContentStore
from pycontainerd.metadata.db import DB
from pycontainerd.snapshots.interface import Snapshotter

logger = logging.getLogger(__name__)


@dataclass
class Stats:
    """What one collection removed and how long it took (nanoseconds)."""

    removed: dict[str, int] = field(default_factory=dict)
    metadata_ns: int = 0
    backend_ns: int = 0

    def add(self, what: str, n: int = 1) -> None:
        self.removed[what] = self.removed.get(what, 0) + n


def _labels(text: str) -> dict[str, str]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def scan_roots(conn: sqlite3.Connection, now: datetime.datetime) -> Iterator[Node]:
    now_ns = int(now.timestamp() * 1e9)
    for ns, lease_id, labels_text in conn.execute("SELECT namespace, id, labels FROM leases"):
        labels = _labels(labels_text)
        if gc.expired(labels, now):
            continue
        flat = gc.LABEL_FLAT in labels
        yield Node(Resource.LEASE, ns, lease_id)
        for rtype, rid in conn.execute(
            "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ?",
            (ns, lease_id),
        ).fetchall():
            kind, _, snapshotter = rtype.partition("/")
            if kind == "content":
                yield Node(Resource.CONTENT_FLAT if flat else Resource.CONTENT, ns, rid)
            elif kind == "snapshots":
                t = Resource.SNAPSHOT_FLAT if flat else Resource.SNAPSHOT
                yield Node(t, ns, f"{snapshotter}/{rid}")
            elif kind == "ingests":
                yield Node(Resource.INGEST, ns, rid)
    for ns, digest, labels_text in conn.execute("SELECT namespace, digest, labels FROM images"):
        yield Node(Resource.CONTENT, ns, digest)
        yield from gc.label_refs(ns, _labels(labels_text))
    for ns, cid in conn.execute("SELECT namespace, id FROM containers"):
        yield Node(Resource.CONTAINER, ns, cid)
    for ns, ref, expire_at in conn.execute("SELECT namespace, ref, expire_at FROM ingests"):
        if expire_at is not None and expire_at > now_ns:
            yield Node(Resource.INGEST, ns, ref)
    for ns, digest, labels_text in conn.execute("SELECT namespace, digest, labels FROM blobs"):
        if gc.is_root(_labels(labels_text)):
            yield Node(Resource.CONTENT, ns, digest)
    for ns, sn, key, labels_text in conn.execute(
        "SELECT namespace, snapshotter, key, labels FROM snapshots"
    ):
        if gc.is_root(_labels(labels_text)):
            yield Node(Resource.SNAPSHOT, ns, f"{sn}/{key}")


def references(conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
    if node.type == Resource.CONTENT:
        row = conn.execute(
            "SELECT labels FROM blobs WHERE namespace = ? AND digest = ?",
            (node.namespace, node.key),
        ).fetchone()
        return gc.label_refs(node.namespace, _labels(row[0])) if row else ()
    if node.type in (Resource.SNAPSHOT, Resource.SNAPSHOT_FLAT):
        sn, _, key = node.key.partition("/")
        row = conn.execute(
            "SELECT parent, labels FROM snapshots WHERE namespace = ? AND snapshotter = ? "
            "AND key = ?",
            (node.namespace, sn, key),
        ).fetchone()
        if row is None:
            return ()
        parent = [Node(node.type, node.namespace, f"{sn}/{row[0]}")] if row[0] else []
        if node.type == Resource.SNAPSHOT_FLAT:
            return parent
        return [*parent, *gc.label_refs(node.namespace, _labels(row[1]))]
    if node.type == Resource.CONTAINER:
        return _container_refs(conn, node)
    if node.type == Resource.INGEST:
        row = conn.execute(
            "SELECT expected FROM ingests WHERE namespace = ? AND ref = ?",
            (node.namespace, node.key),
        ).fetchone()
        if row and row[0]:
            return (Node(Resource.CONTENT, node.namespace, row[0]),)
    return ()


def _container_refs(conn: sqlite3.Connection, node: Node) -> list[Node]:
    # A container holds its root filesystem snapshot and what its gc.ref labels name.
    row = conn.execute(
        "SELECT snapshotter, snapshot_key, labels FROM containers WHERE namespace = ? AND id = ?",
        (node.namespace, node.key),
    ).fetchone()
    if row is None:
        return []
    snapshotter, snapshot_key, labels_text = row
    refs = []
    if snapshotter:
        refs.append(Node(Resource.SNAPSHOT, node.namespace, f"{snapshotter}/{snapshot_key}"))
    refs.extend(gc.label_refs(node.namespace, _labels(labels_text)))
    return refs


@dataclass
class _Swept:
    aborted_ingests: list[str]
    live_digests: set[str]
    live_backend_refs: set[str]
    live_snapshots: dict[str, set[str]]


def mark_and_sweep(conn: sqlite3.Connection, stats: Stats) -> _Swept:
    """The metadata half, run inside one write transaction."""
    now = datetime.datetime.now(datetime.UTC)
    reachable = gc.mark(scan_roots(conn, now), lambda n: references(conn, n))

    for ns, digest in conn.execute("SELECT namespace, digest FROM blobs").fetchall():
        if Node(Resource.CONTENT, ns, digest) not in reachable:
            conn.execute("DELETE FROM blobs WHERE namespace = ? AND digest = ?", (ns, digest))
            stats.add("content")
    aborted = []
    for ns, ref, bref, expected in conn.execute(
        "SELECT namespace, ref, backend_ref, expected FROM ingests"
    ).fetchall():
        if Node(Resource.INGEST, ns, ref) not in reachable:
            conn.execute("DELETE FROM ingests WHERE namespace = ? AND ref = ?", (ns, ref))
            if not expected:
                aborted.append(bref)
            stats.add("ingests")
    for ns, sn, key in conn.execute("SELECT namespace, snapshotter, key FROM snapshots").fetchall():
        if Node(Resource.SNAPSHOT, ns, f"{sn}/{key}") not in reachable:
            conn.execute(
                "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (ns, sn, key),
            )
            stats.add("snapshots")
    for ns, lease_id in conn.execute("SELECT namespace, id FROM leases").fetchall():
        if Node(Resource.LEASE, ns, lease_id) not in reachable:
            conn.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (ns, lease_id))
            stats.add("leases")
    live = {d for (d,) in conn.execute("SELECT DISTINCT digest FROM blobs")}
    # Ingests that still have records, and shared stand-ins, keep their bytes.
    live |= {e for (e,) in conn.execute("SELECT expected FROM ingests WHERE expected != ''")}
    live_refs = {r for (r,) in conn.execute("SELECT backend_ref FROM ingests")}
    live_snapshots: dict[str, set[str]] = {}
    for sn, bkey in conn.execute("SELECT snapshotter, backend_key FROM snapshots"):
        live_snapshots.setdefault(sn, set()).add(bkey)
    return _Swept(aborted, live, live_refs, live_snapshots)


class Collector:
    """Runs collections; one at a time."""

    def __init__(
        self, db: DB, content: ContentStore, snapshotters: Mapping[str, Snapshotter] | None = None
    ) -> None:
        self._db = db
        self._content = content
        self._snapshotters = dict(snapshotters or {})

    async def collect(self) -> Stats:
        stats = Stats()
        async with self._db.gc_lock:
            t0 = time.perf_counter_ns()
            swept = await self._db.update(lambda conn: mark_and_sweep(conn, stats))
            t1 = time.perf_counter_ns()
            backend = self._content.backend
            for bref in swept.aborted_ingests:
                try:
                    await backend.abort(bref)
                except Exception:
                    logger.debug("gc: ingest %s not aborted", bref)
            for st in await backend.list_statuses():
                if st.ref not in swept.live_backend_refs:
                    # its namespace or record went: nobody can resume it
                    try:
                        await backend.abort(st.ref)
                        stats.add("ingests")
                    except Exception:
                        logger.debug("gc: orphan ingest %s not aborted", st.ref)
            garbage = [
                info.digest
                async for info in backend.walk()
                if info.digest not in swept.live_digests
            ]
            for dgst in garbage:
                try:
                    await backend.delete(dgst)
                    stats.add("blobs")
                except Exception:
                    logger.warning("gc: could not remove blob %s", dgst, exc_info=True)
            for name, snapshotter in self._snapshotters.items():
                await self._sweep_snapshots(
                    snapshotter, swept.live_snapshots.get(name, set()), stats
                )
            stats.metadata_ns = t1 - t0
            stats.backend_ns = time.perf_counter_ns() - t1
        if stats.removed:
            logger.debug(
                "garbage collected %s in %.1f ms",
                stats.removed,
                (stats.metadata_ns + stats.backend_ns) / 1e6,
            )
        return stats

    async def _sweep_snapshots(self, sn: Snapshotter, live: set[str], stats: Stats) -> None:
        infos = [info async for info in sn.walk()]
        doomed = {i.name: i for i in infos if i.name not in live}
        while doomed:
            # leaves first: a snapshot no other doomed snapshot names as parent
            parents = {i.parent for i in doomed.values()}
            leaves = [name for name in doomed if name not in parents]
            if not leaves:
                logger.warning("gc: snapshot parent cycle among %s", sorted(doomed))
                return
            for name in leaves:
                del doomed[name]
                try:
                    await sn.remove(name)
                    stats.add("snapshots.backend")
                except Exception:
                    logger.warning("gc: could not remove snapshot %s", name, exc_info=True)
