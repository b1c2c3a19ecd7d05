"""The namespaced content store: containerd's metadata layer over a backend store.

The backend (``content.local``) holds bytes and ingests and knows nothing of
namespaces. This layer records which namespace has which blob (with its labels),
maps a client's ingest ref to a backend ref unique to the namespace
(``<ns>/<seq>/<ref>``), adds what a call writes to the call's lease, and implements
``content_sharing_policy``: with ``shared``, a writer whose expected digest is already
on disk in another namespace finishes without the bytes being sent again (its status
reports the whole size as written); with ``isolated`` every byte is sent and verified.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from pycontainerd import digests, identifiers, namespaces
from pycontainerd.content.interface import Info, ReaderAt, Status, Store, Writer
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

INGEST_EXPIRY_NS = 24 * 3600 * 10**9  # an ingest with no lease is kept one day
_INFO_CACHE_SIZE = 1024


def _validate_labels(labels: Mapping[str, str], what: str = "info.Labels") -> None:
    for k, v in labels.items():
        try:
            identifiers.validate_label(k, v)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: {exc.message}") from exc


def info_fields(info: Info) -> filters.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if path == ("digest",):
            return info.digest, True
        if path == ("size",):
            return str(info.size), True
        if len(path) >= 2 and path[0] == "labels":
            key = ".".join(path[1:])
            return info.labels.get(key, ""), key in info.labels
        return "", False

    return field


def status_fields(st: Status) -> filters.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if path == ("ref",):
            return st.ref, True
        return "", False

    return field


def _row_info(row: tuple[str, int, int, int, str]) -> Info:
    dgst, size, created, updated, labels = row
    return Info(dgst, size, created, updated, json.loads(labels))


def _get_blob(conn: sqlite3.Connection, ns: str, dgst: str) -> Info:
    row = conn.execute(
        "SELECT digest, size, created_at, updated_at, labels FROM blobs "
        "WHERE namespace = ? AND digest = ?",
        (ns, dgst),
    ).fetchone()
    if row is None:
        raise NotFound(f"content digest {dgst}")
    return _row_info(row)


@dataclass
class _Ingest:
    backend_ref: str
    expected: str
    expected_size: int


class ContentStore:
    """Implements ``content.interface.Store`` per namespace (see module docstring)."""

    def __init__(self, db: DB, backend: Store, *, shared: bool = True) -> None:
        self.db = db
        self.backend = backend
        self.shared = shared
        # Blob records already read, valid while the database has made no change since
        # _cached_at: clients read a blob in many small Read calls, each of which looks
        # the blob up, and a database round trip per call is most of their cost.
        self._info_cache: dict[tuple[str, str], Info] = {}
        self._cached_at = self._changes()

    def _changes(self) -> int:
        """Rows changed through the database's connection so far.

        Every write (this store's, the collector's) goes through that one connection,
        and the count moves as a statement runs, before its commit and even if the
        update's caller is cancelled, so an unchanged count means unchanged records.
        """
        return self.db.changes

    async def info(self, dgst: str) -> Info:
        ns = namespaces.required()
        changes = self._changes()
        if changes != self._cached_at:
            self._info_cache.clear()
            self._cached_at = changes
        cached = self._info_cache.get((ns, dgst))
        if cached is None:
            cached = await self.db.view(lambda conn: _get_blob(conn, ns, dgst), point=True)
            # A record read while an update ran may be stale: use it, do not keep it.
            if self._changes() == changes:
                if len(self._info_cache) >= _INFO_CACHE_SIZE:
                    self._info_cache.clear()
                self._info_cache[ns, dgst] = cached
        # A copy of the labels: the caller may change them, the cache must not see it.
        c = cached
        return Info(c.digest, c.size, c.created_at, c.updated_at, dict(c.labels))

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        ns = namespaces.required()

        def apply(conn: sqlite3.Connection) -> Info:
            current = _get_blob(conn, ns, info.digest)
            labels = dict(current.labels)
            if fieldpaths:
                for path in fieldpaths:
                    if path.startswith("labels."):
                        key = path.removeprefix("labels.")
                        value = info.labels.get(key, "")
                        if value:
                            labels[key] = value
                        else:
                            labels.pop(key, None)
                    elif path == "labels":
                        labels = dict(info.labels)
                    else:
                        raise InvalidArgument(
                            f"cannot update {identifiers.go_quote(path)} field on content "
                            f"info {identifiers.go_quote(info.digest)}"
                        )
            else:
                labels = dict(info.labels)
            labels = {k: v for k, v in labels.items() if v}
            _validate_labels(labels)
            now = time.time_ns()
            conn.execute(
                "UPDATE blobs SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
                (json.dumps(labels, sort_keys=True), now, ns, info.digest),
            )
            return Info(current.digest, current.size, current.created_at, now, labels)

        return await self.db.update(apply)

    async def walk(self, filter_strings: Sequence[str] = ()) -> AsyncIterator[Info]:
        ns = namespaces.required()
        flt = filters.parse_all(list(filter_strings))

        def read(conn: sqlite3.Connection) -> list[Info]:
            rows = conn.execute(
                "SELECT digest, size, created_at, updated_at, labels FROM blobs "
                "WHERE namespace = ? ORDER BY digest",
                (ns,),
            )
            return [_row_info(r) for r in rows]

        for info in await self.db.view(read):
            if flt.match(info_fields(info)):
                yield info

    async def delete(self, dgst: str) -> None:
        """Remove the blob from this namespace; the bytes go at the next collection."""
        ns = namespaces.required()

        def apply(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM blobs WHERE namespace = ? AND digest = ?", (ns, dgst))
            if cur.rowcount == 0:
                raise NotFound(f"content digest {dgst}")
            leasestore.release(conn, ns, leasestore.CONTENT, dgst)

        await self.db.update(apply)

    async def reader_at(self, dgst: str) -> ReaderAt:
        await self.info(dgst)
        return await self.backend.reader_at(dgst)

    async def read_blob(self, dgst: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a blob of this namespace from ``offset``, in one
        backend step (see ``content.interface.Store.read_blob``).

        Raises:
            NotFound: no such blob in this namespace.
            InvalidArgument: negative offset or size, or offset past the end.
        """
        await self.info(dgst)
        return await self.backend.read_blob(dgst, offset, size)

    def _ingest(self, conn: sqlite3.Connection, ns: str, ref: str) -> _Ingest:
        row = conn.execute(
            "SELECT backend_ref, expected, expected_size FROM ingests "
            "WHERE namespace = ? AND ref = ?",
            (ns, ref),
        ).fetchone()
        if row is None:
            raise NotFound(f"reference {ref}")
        return _Ingest(*row)

    async def status(self, ref: str) -> Status:
        ns = namespaces.required()
        ingest = await self.db.view(lambda conn: self._ingest(conn, ns, ref))
        if ingest.expected:
            now = time.time_ns()
            return Status(
                ref, ingest.expected_size, ingest.expected_size, ingest.expected, now, now
            )
        st = await self.backend.status(ingest.backend_ref)
        return Status(ref, st.offset, st.total, st.expected, st.started_at, st.updated_at)

    async def list_statuses(self, filter_strings: Sequence[str] = ()) -> list[Status]:
        ns = namespaces.required()
        flt = filters.parse_all(list(filter_strings))
        rows = await self.db.view(
            lambda conn: conn.execute(
                "SELECT ref FROM ingests WHERE namespace = ? ORDER BY ref", (ns,)
            ).fetchall()
        )
        out = []
        for (ref,) in rows:
            try:
                st = await self.status(ref)
            except NotFound:
                continue  # no bytes yet, or removed meanwhile
            if flt.match(status_fields(st)):
                out.append(st)
        return out

    async def abort(self, ref: str) -> None:
        ns = namespaces.required()

        def apply(conn: sqlite3.Connection) -> _Ingest:
            ingest = self._ingest(conn, ns, ref)
            conn.execute("DELETE FROM ingests WHERE namespace = ? AND ref = ?", (ns, ref))
            leasestore.release(conn, ns, leasestore.INGESTS, ref)
            return ingest

        ingest = await self.db.update(apply)
        if not ingest.expected:
            with contextlib.suppress(NotFound):  # nothing was written yet
                await self.backend.abort(ingest.backend_ref)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter:
        """Open or resume an ingest in the current namespace.

        Raises:
            InvalidArgument: empty ref or bad expected digest.
            AlreadyExists: ``expected`` is already in this namespace.
            Unavailable: another writer holds the ref.
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            digests.parse(expected)
        ns = namespaces.required()
        async with self.db.gc_lock:
            return await self._open_writer(ns, ref, total, expected)

    async def _open_writer(self, ns: str, ref: str, total: int, expected: str) -> NamespacedWriter:
        shared_size: int | None = None
        if expected and self.shared:
            try:
                shared_size = (await self.backend.info(expected)).size
            except NotFound:
                shared_size = None
            if shared_size is not None and total not in (0, shared_size):
                shared_size = None

        def apply(conn: sqlite3.Connection) -> str | None:
            nsstore.ensure(conn, ns)
            if expected:
                row = conn.execute(
                    "SELECT 1 FROM blobs WHERE namespace = ? AND digest = ?", (ns, expected)
                ).fetchone()
                if row is not None:
                    leasestore.hold(conn, ns, leasestore.CONTENT, expected)
                    return None
            leased = leasestore.hold(conn, ns, leasestore.INGESTS, ref)
            row = conn.execute(
                "SELECT backend_ref FROM ingests WHERE namespace = ? AND ref = ?", (ns, ref)
            ).fetchone()
            expire = None if leased else time.time_ns() + INGEST_EXPIRY_NS
            if row is None:
                bref = f"{ns}/{next_sequence(conn, 'ingest')}/{ref}"
                conn.execute(
                    "INSERT INTO ingests(namespace, ref, backend_ref, expected, expected_size, "
                    "expire_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        ns,
                        ref,
                        bref,
                        expected if shared_size is not None else "",
                        shared_size or 0,
                        expire,
                    ),
                )
                return bref
            bref = str(row[0])
            conn.execute(
                "UPDATE ingests SET expected = ?, expected_size = ?, expire_at = ? "
                "WHERE namespace = ? AND ref = ?",
                (expected if shared_size is not None else "", shared_size or 0, expire, ns, ref),
            )
            return bref

        bref = await self.db.update(apply)
        if bref is None:
            raise AlreadyExists(f"content {expected}")
        if shared_size is not None:
            return NamespacedWriter(self, ns, ref, bref, None, expected, shared_size)
        backend_writer = await self.backend.writer(bref, total, "")
        return NamespacedWriter(self, ns, ref, bref, backend_writer, expected, total)


class NamespacedWriter:
    """A writer in one namespace; ``backend`` is None while a shared blob stands in."""

    def __init__(
        self,
        store: ContentStore,
        namespace: str,
        ref: str,
        backend_ref: str,
        backend: Writer | None,
        expected: str,
        size: int,
    ) -> None:
        self._store = store
        self._ns = namespace
        self._ref = ref
        self._bref = backend_ref
        self._w = backend
        self._expected = expected
        self._size = size
        self._started = time.time_ns()

    @property
    def ref(self) -> str:
        return self._ref

    def digest(self) -> str:
        return self._w.digest() if self._w is not None else self._expected

    async def status(self) -> Status:
        if self._w is None:
            return Status(
                self._ref, self._size, self._size, self._expected, self._started, self._started
            )
        st = await self._w.status()
        return Status(self._ref, st.offset, st.total, st.expected, st.started_at, st.updated_at)

    async def _materialise(self, size: int) -> Writer:
        """Turn a shared stand-in into a real ingest holding the first ``size`` bytes."""
        w = await self._store.backend.writer(self._bref, self._size, "")
        try:
            if size > 0:
                reader = await self._store.backend.reader_at(self._expected)
                try:
                    offset = 0
                    while offset < size:
                        chunk = await reader.read_at(offset, min(1 << 20, size - offset))
                        if not chunk:
                            break
                        await w.write(chunk)
                        offset += len(chunk)
                finally:
                    await reader.aclose()
        except BaseException:
            await w.close()
            raise
        self._w = w
        return w

    async def write(self, data: bytes) -> None:
        if self._w is None:
            if not data:
                return
            await self._materialise(self._size)
        assert self._w is not None
        await self._w.write(data)

    async def truncate(self, size: int) -> None:
        if self._w is None:
            await self._materialise(size)
            return
        await self._w.truncate(size)

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Commit the blob into this namespace (see ``content.interface.Writer.commit``).

        The backend commit and the metadata record happen under the collector's lock,
        so a blob is never collected between its rename and its record.
        """
        labels = dict(labels or {})
        try:
            _validate_labels(labels)
            if expected:
                digests.parse(expected)
            async with self._store.db.gc_lock:
                actual, size = await self._commit_backend(size, expected)
                inserted = await self._record(actual, size, labels)
        except BaseException:
            await self.close()
            raise
        if not inserted:
            raise AlreadyExists(f"content {actual}")

    async def _commit_backend(self, size: int, expected: str) -> tuple[str, int]:
        if self._w is None:
            if size and size != self._size:
                raise FailedPrecondition(
                    f"{self._ref!r} failed size validation: {self._size} != {size}"
                )
            if expected and expected != self._expected:
                raise FailedPrecondition(f"{self._ref!r} unexpected digest")
            return self._expected, self._size
        st = await self._w.status()
        if size and size != st.offset:
            raise FailedPrecondition(f"{self._ref!r} failed size validation: {st.offset} != {size}")
        # AlreadyExists: the bytes were verified and the blob was already on disk.
        with contextlib.suppress(AlreadyExists):
            await self._w.commit(st.offset, expected)
        return self._w.digest(), st.offset

    async def _record(self, actual: str, size: int, labels: dict[str, str]) -> bool:
        ns, ref = self._ns, self._ref

        def apply(conn: sqlite3.Connection) -> bool:
            nsstore.ensure(conn, ns)
            now = time.time_ns()
            cur = conn.execute(
                "INSERT OR IGNORE INTO blobs(namespace, digest, size, created_at, updated_at, "
                "labels) VALUES (?, ?, ?, ?, ?, ?)",
                (ns, actual, size, now, now, json.dumps(labels, sort_keys=True)),
            )
            conn.execute("DELETE FROM ingests WHERE namespace = ? AND ref = ?", (ns, ref))
            leasestore.release(conn, ns, leasestore.INGESTS, ref)
            leasestore.hold(conn, ns, leasestore.CONTENT, actual)
            return cur.rowcount == 1

        with namespaces.with_namespace(ns):
            return await self._store.db.update(apply)

    async def close(self) -> None:
        if self._w is not None:
            await self._w.close()
