"""Per-snapshotter metadata (containerd's ``snapshots/storage``) on SQLite.

A snapshotter that keeps its layers on a local file system (overlayfs, native) records
here what each snapshot is: a numeric id that names its directory (``snapshots/<id>``),
its kind, its key (or name once committed), its parent, labels, timestamps and, for
committed snapshots, the usage measured at commit. The file is ``<root>/metadata.db``,
in WAL mode, reached only from one dedicated thread.

Operations are methods of a :class:`Transaction`, handed to a synchronous callback that
``MetaStore.view`` or ``MetaStore.update`` runs on that thread; there is no ``await``
inside a transaction. A snapshotter may do its file-system work (mkdir, rename) inside
the same callback, so the directory and the record appear or vanish together, and can
register an undo with :meth:`Transaction.on_rollback`.

Schema (version in ``PRAGMA user_version``)::

    snapshots(id INTEGER PK AUTOINCREMENT,   -- never reused: ids name directories
              key TEXT UNIQUE,               -- active/view key, or committed name
              kind INTEGER,                  -- interface.Kind
              parent INTEGER -> snapshots.id (RESTRICT; NULL for a base snapshot),
              labels JSON, created_at, updated_at (ns since the epoch),
              size, inodes)                  -- usage, set at commit

Commit keeps the id and rewrites the key, so children (which point at the parent's id)
follow the rename. Error messages are those of containerd's ``storage/bolt.go``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from pycontainerd.identifiers import go_quote
from pycontainerd.sansio import filters
from pycontainerd.snapshots.interface import Info, Kind, Usage

__all__ = ["MetaStore", "Snapshot", "Transaction", "kind_name"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        parent INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        inodes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX snapshots_by_parent ON snapshots(parent);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

_KIND_FILTER_VALUES = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "committed"}


def kind_name(kind: Kind) -> str:
    """Go's ``Kind.String()``: ``View``, ``Active``, ``Committed`` or ``Unknown``."""
    return {Kind.VIEW: "View", Kind.ACTIVE: "Active", Kind.COMMITTED: "Committed"}.get(
        kind, "Unknown"
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An active or view snapshot as a backend needs it to build mounts.

    ``parent_ids`` run from the immediate parent down to the base layer, which is the
    order overlayfs wants for ``lowerdir``.
    """

    id: str
    kind: Kind
    parent_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    kind: Kind
    key: str
    parent_id: int | None
    parent_key: str
    labels: dict[str, str]
    created_at: int
    updated_at: int
    size: int
    inodes: int

    def info(self) -> Info:
        return Info(
            kind=self.kind,
            name=self.key,
            parent=self.parent_key,
            labels=dict(self.labels),
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


_SELECT = (
    "SELECT s.id, s.kind, s.key, s.parent, COALESCE(p.key, ''), s.labels, "
    "s.created_at, s.updated_at, s.size, s.inodes "
    "FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent"
)


def _row(values: tuple[object, ...]) -> _Row:
    (id_, kind, key, parent_id, parent_key, labels, created, updated, size, inodes) = values
    assert isinstance(id_, int) and isinstance(kind, int) and isinstance(key, str)
    assert parent_id is None or isinstance(parent_id, int)
    assert isinstance(parent_key, str) and isinstance(labels, str)
    assert isinstance(created, int) and isinstance(updated, int)
    assert isinstance(size, int) and isinstance(inodes, int)
    return _Row(
        id=id_,
        kind=Kind(kind),
        key=key,
        parent_id=parent_id,
        parent_key=parent_key,
        labels=json.loads(labels),
        created_at=created,
        updated_at=updated,
        size=size,
        inodes=inodes,
    )


def _clean_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    # containerd stores no empty values: setting a label to "" removes it.
    return {k: v for k, v in (labels or {}).items() if v != ""}


def _adaptor(info: Info) -> filters.Adaptor:
    """containerd's ``adaptSnapshot``: kind, name, parent and labels.<key>."""

    def adapt(fieldpath: tuple[str, ...]) -> tuple[str, bool]:
        if not fieldpath:
            return "", False
        head = fieldpath[0]
        if head == "kind":
            value = _KIND_FILTER_VALUES.get(info.kind)
            return (value, True) if value is not None else ("", False)
        if head == "name":
            return info.name, True
        if head == "parent":
            # Present even when empty, unlike most adaptors: ``parent==""`` selects bases.
            return info.parent, True
        if head == "labels":
            if not info.labels:
                return "", False
            label = ".".join(fieldpath[1:])
            if label in info.labels:
                return info.labels[label], True
            return "", False
        return "", False

    return adapt


class Transaction:
    """One transaction on the metastore. Use only inside the callback it was given to."""

    def __init__(self, conn: sqlite3.Connection, *, writable: bool) -> None:
        self._conn = conn
        self.writable = writable
        self._undo: list[Callable[[], None]] = []

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the database thread if this transaction does not commit.

        Undo actions run newest first, also when COMMIT itself fails; an undo that
        raises is logged and the others still run.
        """
        self._undo.append(fn)

    def _rolled_back(self) -> None:
        for fn in reversed(self._undo):
            try:
                fn()
            except Exception:
                logger.warning("snapshot storage: undo after rollback failed", exc_info=True)
        self._undo.clear()

    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError("snapshot storage: write in a read-only transaction")

    # --- reads ----------------------------------------------------------------------------

    def _find(self, key: str) -> _Row | None:
        found = self._conn.execute(_SELECT + " WHERE s.key = ?", (key,)).fetchone()
        return _row(found) if found is not None else None

    def _parent_chain(self, snapshot_id: int) -> tuple[str, ...]:
        rows = self._conn.execute(
            "WITH RECURSIVE chain(id, parent, depth) AS ("
            " SELECT id, parent, 0 FROM snapshots WHERE id = ?"
            " UNION ALL"
            " SELECT s.id, s.parent, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent"
            ") SELECT id FROM chain ORDER BY depth",
            (snapshot_id,),
        ).fetchall()
        return tuple(str(r[0]) for r in rows)

    def get_info(self, key: str) -> tuple[str, Info, Usage]:
        """The id, info and stored usage of the snapshot ``key``.

        The usage is what commit recorded; it is zero for active and view snapshots.

        Raises:
            NotFound: no snapshot has this key or name.
        """
        row = self._find(key)
        if row is None:
            raise NotFound("snapshot does not exist")
        return str(row.id), row.info(), Usage(size=row.size, inodes=row.inodes)

    def get_snapshot(self, key: str) -> Snapshot:
        """The id, kind and parent ids of an active or view snapshot.

        Raises:
            NotFound: no such key. FailedPrecondition: ``key`` names a committed snapshot.
        """
        row = self._find(key)
        if row is None:
            raise NotFound("snapshot does not exist")
        if row.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"requested snapshot {key} not active or view")
        parents = self._parent_chain(row.parent_id) if row.parent_id is not None else ()
        return Snapshot(str(row.id), row.kind, parents)

    def walk_info(self, filter_strings: Iterable[str] = ()) -> list[tuple[str, Info]]:
        """``(id, info)`` of every snapshot matching any of the filters, by key.

        Raises:
            InvalidArgument: a filter does not parse.
        """
        flt = filters.parse_all(list(filter_strings))
        out: list[tuple[str, Info]] = []
        for values in self._conn.execute(_SELECT + " ORDER BY s.key"):
            info = _row(values).info()
            if flt.match(_adaptor(info)):
                out.append((str(values[0]), info))
        return out

    def id_map(self) -> dict[str, str]:
        """Every snapshot id (as its directory name) mapped to its key."""
        return {str(i): k for i, k in self._conn.execute("SELECT id, key FROM snapshots")}

    def validate_create(self, kind: Kind, key: str, parent: str = "") -> tuple[str, ...]:
        """Check that ``create_snapshot`` would succeed now, changing nothing.

        Returns:
            The parent ids the new snapshot would have (nearest first).

        Raises:
            The errors of ``create_snapshot``.
        """
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(
                f"snapshot type {kind_name(kind)} invalid; only snapshots of type Active "
                "or View can be created"
            )
        parent_ids: tuple[str, ...] = ()
        if parent:
            prow = self._find(parent)
            if prow is None:
                raise NotFound(f"missing parent {go_quote(parent)} bucket")
            if prow.kind != Kind.COMMITTED:
                raise InvalidArgument(f"parent {go_quote(parent)} is not committed snapshot")
            parent_ids = self._parent_chain(prow.id)
        if self._find(key) is not None:
            raise AlreadyExists(f"snapshot {key}")
        return parent_ids

    # --- writes ---------------------------------------------------------------------------

    def create_snapshot(
        self,
        kind: Kind,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Snapshot:
        """Record a new active or view snapshot on the committed ``parent``.

        Raises:
            InvalidArgument: ``kind`` is not active or view, or the parent is not
                committed. NotFound: no such parent. AlreadyExists: the key is taken.
        """
        self._require_writable()
        parent_ids = self.validate_create(kind, key, parent)
        now = time.time_ns()
        cur = self._conn.execute(
            "INSERT INTO snapshots(key, kind, parent, labels, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                int(kind),
                int(parent_ids[0]) if parent_ids else None,
                json.dumps(_clean_labels(labels), sort_keys=True),
                now,
                now,
            ),
        )
        assert cur.lastrowid is not None
        return Snapshot(str(cur.lastrowid), kind, parent_ids)

    def update_info(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change the labels of ``info.name``; nothing else can change.

        With no field paths every label is replaced by ``info.labels``; ``labels``
        does the same; ``labels.<k>`` sets (or, when absent or empty in ``info``,
        removes) one label.

        Raises:
            NotFound: no such snapshot. InvalidArgument: a field path other than these.
        """
        self._require_writable()
        row = self._find(info.name)
        if row is None:
            raise NotFound("snapshot does not exist")
        labels = dict(row.labels)
        if fieldpaths:
            for path in fieldpaths:
                if path.startswith("labels."):
                    label = path.removeprefix("labels.")
                    labels[label] = info.labels.get(label, "")
                elif path == "labels":
                    labels = dict(info.labels)
                else:
                    raise InvalidArgument(
                        f"cannot update {go_quote(path)} field on snapshot {go_quote(info.name)}"
                    )
        else:
            labels = dict(info.labels)
        labels = _clean_labels(labels)
        now = time.time_ns()
        self._conn.execute(
            "UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?",
            (json.dumps(labels, sort_keys=True), now, row.id),
        )
        return Info(
            kind=row.kind,
            name=row.key,
            parent=row.parent_key,
            labels=labels,
            created_at=row.created_at,
            updated_at=now,
        )

    def commit_active(
        self,
        key: str,
        name: str,
        usage: Usage,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Turn the active ``key`` into the committed ``name``, keeping its id.

        Labels are replaced by ``labels``, not inherited; created and updated times
        are reset to now.

        Returns:
            The snapshot's id.

        Raises:
            AlreadyExists: ``name`` is taken. NotFound: no such key.
            FailedPrecondition: ``key`` is a view or committed.
        """
        self._require_writable()
        if self._find(name) is not None:
            raise AlreadyExists(f"committed snapshot {name}")
        row = self._find(key)
        if row is None:
            raise NotFound(f"failed to get active snapshot {go_quote(key)}")
        if row.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {go_quote(key)} is not active")
        now = time.time_ns()
        self._conn.execute(
            "UPDATE snapshots SET key = ?, kind = ?, labels = ?, created_at = ?, "
            "updated_at = ?, size = ?, inodes = ? WHERE id = ?",
            (
                name,
                int(Kind.COMMITTED),
                json.dumps(_clean_labels(labels), sort_keys=True),
                now,
                now,
                usage.size,
                usage.inodes,
                row.id,
            ),
        )
        return str(row.id)

    def remove(self, key: str) -> tuple[str, Kind]:
        """Forget the snapshot ``key``.

        Returns:
            Its id and kind, for the caller to remove its directory.

        Raises:
            NotFound: no such snapshot. FailedPrecondition: it is the parent of another.
        """
        self._require_writable()
        row = self._find(key)
        if row is None:
            raise NotFound(f"snapshot {key}")
        child = self._conn.execute(
            "SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (row.id,)
        ).fetchone()
        if child is not None:
            raise FailedPrecondition("cannot remove snapshot with child")
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
        return str(row.id), row.kind


class MetaStore:
    """The metastore of one snapshotter. Open with ``await MetaStore.open(path)``."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, pool: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        self.path = path
        self._conn = conn
        self._pool = pool
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> MetaStore:
        """Open (creating if needed) the database at ``path``.

        Raises:
            sqlite3.DatabaseError: not a database, or from a newer schema.
            OSError: the directory cannot be created.
        """
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot-storage")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(pool, connect)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(path, conn, pool)

    async def view(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` in a read-only transaction on the database thread.

        Raises:
            Unavailable: the store is closed; or what ``fn`` raises.
        """

        def run() -> T:
            tx = Transaction(self._conn, writable=False)
            self._conn.execute("BEGIN")
            try:
                return fn(tx)
            finally:
                self._conn.execute("ROLLBACK")

        return await self._run(run)

    async def update(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` in one write transaction: committed if it returns, rolled back
        (with the undo actions it registered) if it or the commit raises.

        A caller cancelled while the transaction runs does not stop it: it still
        commits or rolls back on the database thread.

        Raises:
            Unavailable: the store is closed; or what ``fn`` raises.
        """

        def run() -> T:
            tx = Transaction(self._conn, writable=True)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(tx)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                tx._rolled_back()
                raise
            return result

        return await self._run(run)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise Unavailable("snapshot metadata store is closed")
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, ctx.run, fn)

    async def aclose(self) -> None:
        """Close the database; later calls raise Unavailable. Closing twice is fine."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"snapshot metadata schema version {version} is newer than this pycontainerd "
            f"({SCHEMA_VERSION}); refusing to open it"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
