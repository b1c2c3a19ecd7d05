"""The metadata database: one SQLite file in WAL mode, versioned by migrations.

All access runs on one dedicated thread, so the event loop never blocks on disk and
no two transactions interleave. A transaction is a plain synchronous callback
``fn(conn)``: there is no ``await`` inside it, and ``update`` commits it as one unit (or
rolls it back if it raises). Events are published by callers after the commit.

Schema (version in ``PRAGMA user_version``)::

    namespaces(name PK, created_at)
      namespace_labels(namespace FK cascade, key, value)
    blobs(namespace, digest PK, size, created_at, updated_at, labels JSON)
    ingests(namespace, ref PK, backend_ref, expected, expected_size, expire_at)
    images(namespace, name PK, media_type, digest, size, annotations JSON, labels JSON,
           created_at, updated_at)
    leases(namespace, id PK, created_at, labels JSON)
      lease_resources(namespace, lease FK cascade, type, id)
    sequences(name PK, value)
    snapshots(namespace, snapshotter, key PK, backend_key, parent, kind, labels JSON,
              created_at, updated_at)
    containers(namespace, id PK, labels JSON, image, runtime_name, runtime_options_type,
               runtime_options, spec_type, spec, snapshotter, snapshot_key,
               extensions JSON, sandbox, created_at, updated_at)

Objects are keyed by namespace. Blobs, images, containers and snapshots keep their
namespace alive (a namespace that holds them cannot be deleted); ingests and leases go
with it.

Later capabilities add their tables as new migrations; a migration never edits an
earlier one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Each entry moves the schema from version i to i+1.
MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE namespace_labels (
        namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (namespace, key)
    );
    """,
    """
    CREATE TABLE blobs (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (namespace, digest)
    );
    CREATE INDEX blobs_by_digest ON blobs(digest);
    CREATE TABLE ingests (
        namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
        ref TEXT NOT NULL,
        backend_ref TEXT NOT NULL,
        expected TEXT NOT NULL DEFAULT '',
        expected_size INTEGER NOT NULL DEFAULT 0,
        expire_at INTEGER,
        PRIMARY KEY (namespace, ref)
    );
    CREATE TABLE images (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        name TEXT NOT NULL,
        media_type TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        annotations TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    );
    CREATE TABLE leases (
        namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
        id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id),
        FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
    );
    CREATE TABLE sequences (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE snapshots (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        backend_key TEXT NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        kind INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key)
    );
    CREATE INDEX snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
    """,
    # Any-typed fields (runtime options, spec) are a type URL and bytes, NULL when
    # unset; extensions are JSON {key: [type_url, base64 bytes]}.
    """
    CREATE TABLE containers (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        image TEXT NOT NULL DEFAULT '',
        runtime_name TEXT NOT NULL,
        runtime_options_type TEXT,
        runtime_options BLOB,
        spec_type TEXT,
        spec BLOB,
        snapshotter TEXT NOT NULL DEFAULT '',
        snapshot_key TEXT NOT NULL DEFAULT '',
        extensions TEXT NOT NULL DEFAULT '{}',
        sandbox TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def next_sequence(conn: sqlite3.Connection, name: str) -> int:
    """A counter that only grows, inside the caller's transaction."""
    conn.execute(
        "INSERT INTO sequences(name, value) VALUES (?, 1) "
        "ON CONFLICT(name) DO UPDATE SET value = value + 1",
        (name,),
    )
    (value,) = conn.execute("SELECT value FROM sequences WHERE name = ?", (name,)).fetchone()
    return int(value)


class DB:
    """The metadata database. Open with ``await DB.open(path)``, close with ``aclose``."""

    def __init__(self, path: Path, conn: sqlite3.Connection, pool: concurrent.futures.Executor):
        self.path = path
        self._conn = conn
        self._pool = pool
        self._closed = False
        # Held by whoever uses the connection: the database thread, or the event loop
        # for a point lookup (``view(point=True)``) while the thread has nothing to do.
        self._in_use = threading.Lock()
        # Counts committed updates; the garbage collector's scheduler reads it.
        self.mutations = 0
        self._mutation_listeners: list[Callable[[], None]] = []
        self._deletion_listeners: list[Callable[[], None]] = []
        # Held by the collector while it removes backend objects, and by stores while
        # a backend object exists that no record points to yet (a commit between its
        # backend half and its metadata half), so neither sees the other half-done.
        self.gc_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> DB:
        """Open (creating if needed) and migrate the database at ``path``.

        Raises:
            sqlite3.DatabaseError: the file is not a database, or is from a newer schema.
        """
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metadata")
        loop = asyncio.get_running_loop()

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
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
            conn = await loop.run_in_executor(pool, connect)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(path, conn, pool)

    def add_mutation_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the event loop thread after every committed update."""
        self._mutation_listeners.append(fn)

    def add_deletion_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever a store reports a deletion (see ``deleted``)."""
        self._deletion_listeners.append(fn)

    @property
    def changes(self) -> int:
        """Rows changed through the connection so far: it moves with every write, as the
        statement runs, even one whose caller is then cancelled; -1 once closed."""
        try:
            return self._conn.total_changes
        except sqlite3.ProgrammingError:
            return -1

    def deleted(self) -> None:
        """Stores call this after committing a deletion that may leave garbage."""
        for listener in self._deletion_listeners:
            listener()

    async def view(self, fn: Callable[[sqlite3.Connection], T], *, point: bool = False) -> T:
        """Run a read-only transaction.

        ``point``: ``fn`` looks records up by key. It then runs here, on the event
        loop, when the connection is free: its queries take tens of microseconds, a trip
        to the database thread and back a few hundred. Scans always go to the thread.
        """

        def run() -> T:
            self._conn.execute("BEGIN")
            try:
                return fn(self._conn)
            finally:
                self._conn.execute("ROLLBACK")

        if point and not self._closed and self._in_use.acquire(blocking=False):
            try:
                return run()
            finally:
                self._in_use.release()
        return await self._run(run)

    async def update(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction: committed if it returns, rolled back if
        it raises (the exception propagates). If the caller is cancelled while the
        transaction runs, the transaction still completes or rolls back on its thread."""

        def run() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

        result = await self._run(run)
        self.mutations += 1
        for listener in self._mutation_listeners:
            listener()
        return result

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("metadata database is closed")
        loop = asyncio.get_running_loop()
        # Carry the caller's context (namespace, lease) onto the database thread.
        ctx = contextvars.copy_context()

        def locked() -> T:
            with self._in_use:
                return ctx.run(fn)

        return await loop.run_in_executor(self._pool, locked)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"metadata schema version {version} is newer than this pycontainerd "
            f"({SCHEMA_VERSION}); refusing to open it"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    # executescript() would commit our open transaction first; split instead. The
    # migration scripts are ours and contain no semicolons inside literals.
    return [s.strip() for s in script.split(";") if s.strip()]
