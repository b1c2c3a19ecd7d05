"""The namespaced snapshotter: containerd's metadata layer over one backend.

Clients' keys live per namespace; the backend sees keys unique across namespaces
(``<ns>/<seq>/<key>``) and only the labels meant for it (``containerd.io/snapshot/``).
Labels, parents and kinds are kept here. As in containerd, ``remove`` deletes the
record at once and leaves the backend snapshot to the garbage collector, which
removes backend snapshots no record points to.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from pycontainerd import identifiers, namespaces
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from pycontainerd.metadata import leases as leasestore
from pycontainerd.metadata import namespaces as nsstore
from pycontainerd.metadata.db import DB, next_sequence
from pycontainerd.sansio import filters
from pycontainerd.snapshots.interface import Info, Kind, Mount, Snapshotter, Usage

INHERITED_LABEL_PREFIX = "containerd.io/snapshot/"
# Unpackers name the committed snapshot they are about to make; if it exists already
# the prepare answers AlreadyExists so they can skip the layer.
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"


def inherited(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k.startswith(INHERITED_LABEL_PREFIX)}


def info_fields(info: Info) -> filters.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path == ("kind",):
            return info.kind.name.lower(), True
        if path == ("name",):
            return info.name, bool(info.name)
        if path == ("parent",):
            return info.parent, bool(info.parent)
        if path[0] == "labels":
            key = ".".join(path[1:])
            return info.labels.get(key, ""), key in info.labels
        return "", False

    return field


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    backend_key: str
    parent: str
    kind: Kind
    labels: dict[str, str]
    created_at: int
    updated_at: int

    def info(self) -> Info:
        return Info(self.kind, self.key, self.parent, self.labels, self.created_at, self.updated_at)


_COLUMNS = "key, backend_key, parent, kind, labels, created_at, updated_at"


def _validate_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        try:
            identifiers.validate_label(k, v)
        except InvalidArgument as exc:
            raise InvalidArgument(f"snapshot.Labels: {exc.message}") from exc


class NamespacedSnapshotter:
    """Implements ``snapshots.interface.Snapshotter`` per namespace."""

    def __init__(self, db: DB, name: str, backend: Snapshotter) -> None:
        self.db = db
        self.name = name
        self.backend = backend

    def _row(self, conn: sqlite3.Connection, ns: str, key: str) -> _Row:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (ns, self.name, key),
        ).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key} does not exist")
        k, bk, parent, kind, labels, created, updated = row
        return _Row(k, bk, parent, Kind(kind), json.loads(labels), created, updated)

    async def stat(self, key: str) -> Info:
        ns = namespaces.required()
        return (await self.db.view(lambda conn: self._row(conn, ns, key), point=True)).info()

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        ns = namespaces.required()
        if not info.name:
            raise InvalidArgument("snapshot name is required for update")

        def apply(conn: sqlite3.Connection) -> Info:
            row = self._row(conn, ns, info.name)
            labels = dict(row.labels)
            if fieldpaths:
                for path in fieldpaths:
                    if path.startswith("labels."):
                        key = path.removeprefix("labels.")
                        labels[key] = info.labels.get(key, "")
                    elif path == "labels":
                        labels = dict(info.labels)
                    else:
                        raise InvalidArgument(
                            f"cannot update {identifiers.go_quote(path)} field on snapshot "
                            f"{identifiers.go_quote(info.name)}"
                        )
            else:
                labels = dict(info.labels)
            labels = {k: v for k, v in labels.items() if v}
            _validate_labels(labels)
            now = time.time_ns()
            conn.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ? WHERE namespace = ? AND "
                "snapshotter = ? AND key = ?",
                (json.dumps(labels, sort_keys=True), now, ns, self.name, info.name),
            )
            return Info(row.kind, row.key, row.parent, labels, row.created_at, now)

        return await self.db.update(apply)

    async def _backend_key(self, key: str) -> str:
        ns = namespaces.required()
        return (await self.db.view(lambda conn: self._row(conn, ns, key), point=True)).backend_key

    async def usage(self, key: str) -> Usage:
        return await self.backend.usage(await self._backend_key(key))

    async def mounts(self, key: str) -> list[Mount]:
        return await self.backend.mounts(await self._backend_key(key))

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return await self._create(key, parent, dict(labels or {}), Kind.ACTIVE)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return await self._create(key, parent, dict(labels or {}), Kind.VIEW)

    async def _create(
        self, key: str, parent: str, labels: dict[str, str], kind: Kind
    ) -> list[Mount]:
        ns = namespaces.required()
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        _validate_labels(labels)

        target = labels.get(LABEL_SNAPSHOT_REF, "")

        def reserve(conn: sqlite3.Connection) -> tuple[str, str]:
            nsstore.ensure(conn, ns)
            if target:
                found = conn.execute(
                    "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                    (ns, self.name, target),
                ).fetchone()
                if found:
                    raise AlreadyExists(f"target snapshot {identifiers.go_quote(target)}")
            exists = conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (ns, self.name, key),
            ).fetchone()
            if exists:
                raise AlreadyExists(f"snapshot {identifiers.go_quote(key)}")
            bparent = ""
            if parent:
                try:
                    prow = self._row(conn, ns, parent)
                except NotFound:
                    raise NotFound(f"parent snapshot {parent} does not exist") from None
                if prow.kind != Kind.COMMITTED:
                    raise InvalidArgument(f"parent snapshot {parent} is not committed")
                bparent = prow.backend_key
            bkey = f"{ns}/{next_sequence(conn, 'snapshot:' + self.name)}/{key}"
            now = time.time_ns()
            conn.execute(
                "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, kind, "
                "labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ns,
                    self.name,
                    key,
                    bkey,
                    parent,
                    int(kind),
                    json.dumps(labels, sort_keys=True),
                    now,
                    now,
                ),
            )
            leasestore.hold(conn, ns, f"{leasestore.SNAPSHOTS}/{self.name}", key)
            return bkey, bparent

        async with self.db.gc_lock:
            bkey, bparent = await self.db.update(reserve)
            try:
                if kind == Kind.VIEW:
                    return await self.backend.view(bkey, bparent, inherited(labels))
                return await self.backend.prepare(bkey, bparent, inherited(labels))
            except BaseException:
                await self.db.update(lambda conn: self._forget(conn, ns, key))
                raise

    def _forget(self, conn: sqlite3.Connection, ns: str, key: str) -> None:
        conn.execute(
            "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (ns, self.name, key),
        )
        leasestore.release(conn, ns, f"{leasestore.SNAPSHOTS}/{self.name}", key)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        ns = namespaces.required()
        labels = dict(labels or {})
        _validate_labels(labels)
        if not name:
            raise InvalidArgument("snapshot name must not be empty")

        def check(conn: sqlite3.Connection) -> tuple[_Row, str]:
            row = self._row(conn, ns, key)
            if row.kind != Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key} is not active")
            taken = conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (ns, self.name, name),
            ).fetchone()
            if taken:
                raise AlreadyExists(f"snapshot {identifiers.go_quote(name)}")
            return row, f"{ns}/{next_sequence(conn, 'snapshot:' + self.name)}/{name}"

        async with self.db.gc_lock:
            await self._commit(ns, name, key, labels, check)

    async def _commit(
        self,
        ns: str,
        name: str,
        key: str,
        labels: dict[str, str],
        check: Callable[[sqlite3.Connection], tuple[_Row, str]],
    ) -> None:
        row, bname = await self.db.update(check)
        await self.backend.commit(bname, row.backend_key, inherited(labels))

        def record(conn: sqlite3.Connection) -> None:
            now = time.time_ns()
            self._forget(conn, ns, key)
            conn.execute(
                "INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, kind, "
                "labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ns,
                    self.name,
                    name,
                    bname,
                    row.parent,
                    int(Kind.COMMITTED),
                    json.dumps(labels, sort_keys=True),
                    now,
                    now,
                ),
            )
            leasestore.hold(conn, ns, f"{leasestore.SNAPSHOTS}/{self.name}", name)

        await self.db.update(record)

    async def remove(self, key: str) -> None:
        ns = namespaces.required()

        def apply(conn: sqlite3.Connection) -> None:
            self._row(conn, ns, key)
            child = conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? "
                "LIMIT 1",
                (ns, self.name, key),
            ).fetchone()
            if child:
                raise FailedPrecondition("cannot remove snapshot with child")
            self._forget(conn, ns, key)

        await self.db.update(apply)
        self.db.deleted()

    async def walk(self, filter_strings: Sequence[str] = ()) -> AsyncIterator[Info]:
        ns = namespaces.required()
        flt = filters.parse_all(list(filter_strings))

        def read(conn: sqlite3.Connection) -> list[Info]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM snapshots WHERE namespace = ? AND snapshotter = ? "
                "ORDER BY key",
                (ns, self.name),
            ).fetchall()
            return [
                _Row(k, bk, p, Kind(kd), json.loads(lb), c, u).info()
                for k, bk, p, kd, lb, c, u in rows
            ]

        for info in await self.db.view(read):
            if flt.match(info_fields(info)):
                yield info

    async def cleanup(self) -> None:
        await self.backend.cleanup()

    async def aclose(self) -> None:
        await self.backend.aclose()
