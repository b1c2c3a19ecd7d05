"""The local content store: blobs in files under a root directory, as containerd lays them out.

Layout (the same as containerd's ``content/local``, so tools and operators find things
where they expect them)::

    <root>/blobs/<algorithm>/<hex>          committed blobs, read-only (mode & ~0333)
    <root>/ingest/<sha256 hex of ref>/      one directory per ingest
        ref        the ref, as given by the client
        data       the bytes written so far
        startedat  RFC 3339 timestamp (Go's ``time.MarshalText``)
        updatedat  RFC 3339 timestamp, rewritten on close
        total      the expected total size in decimal, only when it is known

A ref is client text and never becomes a path component: the ingest directory is named
by the sha256 of the ref. A digest is validated with ``digests.parse`` before it is
turned into a path. A blob only appears under ``blobs/`` by a ``rename`` of a fully
written, synced, read-only ``data`` file, so a reader never sees half a blob.

This backend knows nothing of namespaces and keeps no labels; the metadata layer
(``metadata.content``) owns both. All file I/O and hashing runs in worker threads
(``asyncio.to_thread``), never on the event loop, with two exceptions that cannot
wait on the disk: closing a read-only descriptor, and ``read_blob``'s reads of bytes
already in the page cache (``RWF_NOWAIT``), which spare small reads a thread hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import shutil
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pycontainerd import digests
from pycontainerd.content.interface import Info, Status
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from pycontainerd.identifiers import go_quote
from pycontainerd.sansio import filters as filter_lang

if TYPE_CHECKING:
    from pycontainerd.content.interface import ReaderAt, Store, Writer

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_CHUNK = 1 << 20
_READ_FDS = 16  # blob descriptors LocalStore.read_blob keeps open
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Go's zero time.Time, which containerd writes for an unset timestamp; we read it as 0.
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)

DEFAULT_LOCK_ATTEMPTS = 10


# --- timestamps and durations, written and read as containerd (Go) does -------------------


def format_timestamp(ns: int) -> str:
    """``ns`` since the epoch as Go's RFC3339Nano in UTC (trailing zeros trimmed)."""
    secs, frac = divmod(ns, 10**9)
    text = (_EPOCH + timedelta(seconds=secs)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch from RFC 3339 text with any offset.

    An empty text and Go's zero time read as 0, as containerd reads them as unset.

    Raises:
        ValueError: not an RFC 3339 timestamp.
    """
    text = text.strip()
    if not text or text == _GO_ZERO_TIME:
        return 0
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid timestamp {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = int((m.group(7) or "").ljust(9, "0"))
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    delta = datetime(year, month, day, hour, minute, second, tzinfo=tz) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 10**9 + frac


def _fixed(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10**digits)
    if not frac:
        return str(whole)
    return f"{whole}." + f"{frac:0{digits}d}".rstrip("0")


def go_duration(ns: int) -> str:
    """A duration as Go's ``time.Duration.String`` prints it (``1.5ms``, ``2m3.1s``)."""
    if ns < 0:
        return "-" + go_duration(-ns)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _fixed(ns, 3) + "µs"
    if ns < 10**9:
        return _fixed(ns, 6) + "ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _fixed(rest, 9) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


# --- small file helpers (all blocking; called from worker threads) -------------------------


def _write_to_completion(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically, synced, as containerd's ``writeToCompletion``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_SYNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_all(path: Path) -> None:
    """Remove a file or a tree; a missing path is not an error (Go's ``os.RemoveAll``)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _hash_fd(fd: int, algorithm: str, limit: int | None = None) -> tuple[Any, int]:
    """Hash the file behind ``fd`` from offset 0 up to ``limit`` bytes (or EOF)."""
    hasher = digests.hasher(algorithm)
    offset = 0
    while limit is None or offset < limit:
        want = _CHUNK if limit is None else min(_CHUNK, limit - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
    return hasher, offset


def _pread_full(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset``, fewer only at end of file."""
    chunk = os.pread(fd, size, offset)
    if len(chunk) == size or not chunk:
        return chunk  # the usual case: one read, no join copy
    parts = [chunk]
    got = len(chunk)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _close_orphaned_blob(task: asyncio.Future[tuple[_CachedBlob, bytes]]) -> None:
    """Close the descriptor a cancelled ``read_blob`` opened."""
    if not task.cancelled() and task.exception() is None:
        os.close(task.result()[0].fd)


def _digest_of(hasher: Any, algorithm: str) -> str:
    return f"{algorithm}:{hasher.hexdigest()}"


def _info_fields(info: Info) -> filter_lang.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path == ("digest",):
            return info.digest, True
        if path == ("size",):
            return str(info.size), True
        if path[0] == "labels" and len(path) > 1:
            key = ".".join(path[1:])
            return info.labels.get(key, ""), key in info.labels
        return "", False

    return field


def _status_fields(st: Status) -> filter_lang.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if path == ("ref",):
            return st.ref, True
        return "", False

    return field


class _CorruptIngest(Exception):
    """An ingest directory whose files cannot be read back (restart it, or skip it)."""


# --- ref locks ----------------------------------------------------------------------------


class _RefLocks:
    """The refs held by open writers of one store.

    containerd keeps this table per process; here it is per ``LocalStore`` instance, so
    a second instance over the same root behaves as a restarted daemon (which is what
    the crash tests need). Do not run two instances over one root otherwise.
    Guarded by a thread lock because writers release their ref from worker threads.
    """

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._since: dict[str, int] = {}

    def try_lock(self, ref: str) -> None:
        """Raises Unavailable: ``ref`` is held."""
        with self._mu:
            since = self._since.get(ref)
            if since is None:
                self._since[ref] = time.time_ns()
                return
        held = go_duration(time.time_ns() - since)
        raise Unavailable(f"ref {ref} locked for {held} (since {format_timestamp(since)})")

    def unlock(self, ref: str) -> None:
        with self._mu:
            self._since.pop(ref, None)


# --- reader -------------------------------------------------------------------------------


class LocalReaderAt:
    """Positional reads of one committed blob, through a file descriptor kept open.

    The blob stays readable through this reader even if it is deleted meanwhile. An
    unclosed reader's descriptor is closed when the reader is garbage collected.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._size = size
        self._fd: int | None = fd
        self._mu = threading.Lock()  # a read in a worker thread never races aclose
        self._close_fd = weakref.finalize(self, os.close, fd)

    @property
    def size(self) -> int:
        return self._size

    async def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; fewer only at the end of the blob.

        Raises:
            InvalidArgument: negative offset or size, or offset past the end.
            FailedPrecondition: the reader is closed.
        """
        if offset < 0:
            raise InvalidArgument(f"negative offset {offset}")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        if offset > self._size:
            raise InvalidArgument(f"read past object length {self._size} bytes")
        # The blob is immutable, so clamping here bounds the buffer a huge request allocates.
        size = min(size, self._size - offset)
        if size == 0:
            return b""
        return await asyncio.to_thread(self._read_sync, offset, size)

    def _read_sync(self, offset: int, size: int) -> bytes:
        with self._mu:
            if self._fd is None:
                raise FailedPrecondition("reader is closed")
            return _pread_full(self._fd, offset, size)

    async def aclose(self) -> None:
        """Release the descriptor. Idempotent."""
        # Closing a read-only descriptor does not block, so when no read holds the lock
        # it is done here rather than costing a worker-thread hop per reader.
        if self._mu.acquire(blocking=False):
            try:
                self._fd = None
                self._close_fd()
            finally:
                self._mu.release()
            return
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._mu:
            self._fd = None
            self._close_fd()


# --- writer -------------------------------------------------------------------------------


class LocalWriter:
    """One open ingest (see ``content.interface.Writer``).

    Each operation runs as one unit in a worker thread, serialised by a lock, and
    updates the writer's state there: a cancelled ``write``/``truncate``/``commit``/
    ``close`` still finishes in its thread, so offset, digest and file always agree.
    Writes go straight to the file (no buffering), so what ``write`` returned for
    survives a crash of this process and is found again by a resume.
    """

    def __init__(
        self,
        store: LocalStore,
        ref: str,
        path: Path,
        fd: int,
        *,
        offset: int,
        total: int,
        algorithm: str,
        hasher: Any,
        expected: str,
        started_at: int,
        updated_at: int,
    ) -> None:
        self._store = store
        self._ref = ref
        self._path = path
        self._fd: int | None = fd
        self._close_fd = weakref.finalize(self, os.close, fd)
        self._offset = offset
        self._total = total
        self._algorithm = algorithm
        self._hasher = hasher
        self._digest = _digest_of(hasher, algorithm)
        self._expected = expected
        self._started_at = started_at
        self._updated_at = updated_at
        self._mu = threading.Lock()

    @property
    def ref(self) -> str:
        return self._ref

    def digest(self) -> str:
        """Digest of the bytes written so far; after a commit, the committed digest."""
        return self._digest

    async def status(self) -> Status:
        """The writer's view: offset, total and times as this writer holds them.

        ``expected`` is the digest given when the writer was opened (the backend does
        not persist it, so ``LocalStore.status`` reports "").
        """
        return Status(
            self._ref,
            self._offset,
            self._total,
            self._expected,
            self._started_at,
            self._updated_at,
        )

    def _require_open(self) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")
        return self._fd

    async def write(self, data: bytes) -> None:
        """Append ``data`` at the current offset.

        Raises:
            FailedPrecondition: the writer is closed or committed.
            OSError: the file system failed (the bytes written before the failure
                count: offset and digest cover them).
        """
        await asyncio.to_thread(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        with self._mu:
            fd = self._require_open()
            view = memoryview(data)
            written = 0
            try:
                while written < len(view):
                    written += os.pwrite(fd, view[written:], self._offset + written)
            finally:
                self._hasher.update(view[:written])
                self._offset += written
                self._digest = _digest_of(self._hasher, self._algorithm)
                self._updated_at = time.time_ns()

    async def truncate(self, size: int) -> None:
        """Cut the ingest back to ``size`` bytes and re-hash what remains.

        containerd's local store supports only 0; any size up to the offset works here.

        Raises:
            InvalidArgument: size negative or beyond the current offset.
            FailedPrecondition: the writer is closed or committed.
        """
        await asyncio.to_thread(self._truncate_sync, size)

    def _truncate_sync(self, size: int) -> None:
        with self._mu:
            fd = self._require_open()
            if size < 0 or size > self._offset:
                raise InvalidArgument(
                    f"truncate size {size} out of range: offset is {self._offset}"
                )
            os.ftruncate(fd, size)
            if size == 0:
                self._hasher = digests.hasher(self._algorithm)
            else:
                self._hasher, _ = _hash_fd(fd, self._algorithm, size)
            self._offset = size
            self._digest = _digest_of(self._hasher, self._algorithm)
            self._updated_at = time.time_ns()

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Make the blob visible under its digest; always closes the writer.

        ``size`` 0 and ``expected`` "" mean unknown. ``labels`` are accepted and
        ignored: this backend keeps none. When ``expected`` uses another algorithm
        than the writer hashed with, the data is re-hashed with that algorithm.

        Raises:
            FailedPrecondition: the writer was already closed, or the size or digest
                does not match (``unexpected commit size %d, expected %d`` /
                ``unexpected commit digest %s, expected %s``). Nothing is committed
                and the ingest is kept for a resume.
            InvalidArgument: ``expected`` is not a valid digest.
            AlreadyExists: the blob is already committed (the ingest is removed).
            NotFound: the ingest was aborted while this writer held it.
        """
        del labels  # owned by the metadata layer
        await asyncio.to_thread(self._commit_sync, size, expected)

    def _commit_sync(self, size: int, expected: str) -> None:
        with self._mu:
            fd = self._require_open()
            self._fd = None
            try:
                try:
                    os.fsync(fd)
                    st = os.fstat(fd)
                finally:
                    self._close_fd()
                if size > 0 and size != st.st_size:
                    raise FailedPrecondition(
                        f"unexpected commit size {st.st_size}, expected {size}"
                    )
                dgst = self._digest
                if expected:
                    algorithm, _ = digests.parse(expected)
                    if algorithm != self._algorithm:
                        dgst = self._rehash_data(algorithm)
                    if expected != dgst:
                        raise FailedPrecondition(
                            f"unexpected commit digest {dgst}, expected {expected}"
                        )
                self._digest = dgst
                self._store._install(self._ref, self._path, dgst, st.st_mode)
            finally:
                self._store._locks.unlock(self._ref)

    def _rehash_data(self, algorithm: str) -> str:
        fd = os.open(self._path / "data", os.O_RDONLY)
        try:
            hasher, _ = _hash_fd(fd, algorithm)
        finally:
            os.close(fd)
        return _digest_of(hasher, algorithm)

    async def close(self) -> None:
        """Release the ref without committing; the ingest stays for a resume.

        Syncs the data and records ``updatedat``. Idempotent; a no-op after commit.
        """
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._mu:
            fd = self._fd
            if fd is None:
                return
            self._fd = None
            try:
                try:
                    os.fsync(fd)
                finally:
                    self._close_fd()
                # As containerd: the ingest may have been aborted meanwhile, and the
                # timestamp is advisory (status also looks at the data file's mtime).
                try:
                    _write_to_completion(
                        self._path / "updatedat", format_timestamp(self._updated_at).encode()
                    )
                except OSError as exc:
                    logger.debug("ref %s: could not record updatedat: %s", self._ref, exc)
            finally:
                self._store._locks.unlock(self._ref)

    def _abandon_sync(self) -> None:
        """Drop the descriptor as a crash would: nothing written, ref left held."""
        with self._mu:
            self._fd = None
            self._close_fd()


# --- store --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CachedBlob:
    fd: int
    size: int


@dataclass(frozen=True, slots=True)
class _Resumed:
    offset: int
    total: int
    hasher: Any
    started_at: int
    updated_at: int


class LocalStore:
    """containerd's local content store (see the module docstring for the layout).

    Implements ``content.interface.Store``. ``update`` is not supported (this backend
    keeps no labels; containerd's store without a label store refuses it the same
    way), and ``Info.labels`` is always empty.
    """

    def __init__(self, root: Path, *, lock_attempts: int = DEFAULT_LOCK_ATTEMPTS) -> None:
        """Use ``open``, which also creates the directories."""
        if lock_attempts < 1:
            raise ValueError("lock_attempts must be at least 1")
        self._root = Path(root)
        self._lock_attempts = lock_attempts
        self._locks = _RefLocks()
        self._writers: weakref.WeakSet[LocalWriter] = weakref.WeakSet()
        # Descriptors of recently read blobs, for ``read_blob`` (event loop thread only).
        self._read_fds: OrderedDict[str, _CachedBlob] = OrderedDict()
        self._deletions = 0  # a descriptor opened before a delete is not cached
        self._nowait = hasattr(os, "RWF_NOWAIT")

    @classmethod
    async def open(cls, root: Path, *, lock_attempts: int = DEFAULT_LOCK_ATTEMPTS) -> LocalStore:
        """A store over ``root``, creating ``root/ingest`` as needed.

        ``lock_attempts``: how many times ``writer`` tries a held ref, with random
        back-off of up to 2**attempt ms between tries (containerd tries 10 times, so a
        writer that is just closing does not fail a new one).
        """
        store = cls(root, lock_attempts=lock_attempts)
        await asyncio.to_thread(store._ingest_root.mkdir, 0o777, True, True)
        return store

    async def aclose(self) -> None:
        """Release the descriptors of writers still open, as a crash would: their ingests
        stay on disk for a resume and nothing more is written to them."""
        while self._read_fds:
            os.close(self._read_fds.popitem()[1].fd)
        for writer in list(self._writers):
            await asyncio.to_thread(writer._abandon_sync)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def _ingest_root(self) -> Path:
        return self._root / "ingest"

    @property
    def _blobs_root(self) -> Path:
        return self._root / "blobs"

    def blob_path(self, dgst: str) -> Path:
        """Where the blob ``dgst`` lives (whether or not it exists).

        Raises:
            InvalidArgument: ``dgst`` is not a valid digest.
        """
        algorithm, hexpart = digests.parse(dgst)
        return self._blobs_root / algorithm / hexpart

    def ingest_path(self, ref: str) -> Path:
        """The ingest directory of ``ref``: named by the sha256 of the ref, never by
        the ref itself, so any text is a safe ref.

        Raises:
            InvalidArgument: ``ref`` cannot be encoded as UTF-8.
        """
        try:
            raw = ref.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"ref {ref!r} is not valid UTF-8") from exc
        return self._ingest_root / hashlib.sha256(raw).hexdigest()

    # -- blobs --

    async def info(self, dgst: str) -> Info:
        """Size and times of a blob (created and updated are both the commit time).

        Raises:
            InvalidArgument: invalid digest.
            NotFound: no such blob.
        """
        path = self.blob_path(dgst)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"content {dgst}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"content {dgst}")
        return Info(dgst, st.st_size, st.st_mtime_ns, st.st_mtime_ns, {})

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Not supported: this backend keeps no labels (the metadata layer does).

        Raises:
            FailedPrecondition: always, as containerd's store without a label store.
        """
        raise FailedPrecondition("update not supported on immutable content store")

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every committed blob matching any filter, ordered by algorithm and hex.

        Filter fields: ``digest``, ``size`` and ``labels.<key>`` (never set here).
        Files under ``blobs/`` that are not named as a digest are skipped.

        Raises:
            InvalidArgument: a filter does not parse.
        """
        flt = filter_lang.parse_all(list(filters))
        for info in await asyncio.to_thread(self._list_blobs):
            if flt.match(_info_fields(info)):
                yield info

    def _list_blobs(self) -> list[Info]:
        out: list[Info] = []
        try:
            algorithms = sorted(os.scandir(self._blobs_root), key=lambda e: e.name)
        except FileNotFoundError:
            return out  # nothing committed yet
        for alg in algorithms:
            if alg.name not in digests.ALGORITHMS or not alg.is_dir(follow_symlinks=False):
                continue
            for entry in sorted(os.scandir(alg.path), key=lambda e: e.name):
                dgst = f"{alg.name}:{entry.name}"
                try:
                    digests.parse(dgst)
                except InvalidArgument:
                    logger.warning("skipping %s: not a blob name", entry.path)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                if stat.S_ISREG(st.st_mode):
                    out.append(Info(dgst, st.st_size, st.st_mtime_ns, st.st_mtime_ns, {}))
        return out

    async def delete(self, dgst: str) -> None:
        """Remove a blob. Open readers keep reading it.

        Raises:
            InvalidArgument: invalid digest.
            NotFound: no such blob.
        """
        path = self.blob_path(dgst)
        self._deletions += 1
        self._forget_fd(dgst)
        try:
            await asyncio.to_thread(os.unlink, path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"content {dgst}") from exc

    async def reader_at(self, dgst: str) -> LocalReaderAt:
        """Open a blob for positional reads; the caller must ``aclose`` it.

        Raises:
            InvalidArgument: invalid digest.
            NotFound: no such blob.
        """
        path = self.blob_path(dgst)

        def open_reader() -> LocalReaderAt:
            fd = os.open(path, os.O_RDONLY)
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise NotFound(f"content {dgst}")
            return LocalReaderAt(fd, st.st_size)

        try:
            # A reader orphaned by cancellation closes its descriptor when collected.
            return await asyncio.to_thread(open_reader)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"content {dgst}") from exc

    async def read_blob(self, dgst: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a blob from ``offset``, for the small reads clients
        make one request each.

        The blob's descriptor is kept open (a few, most recently used, per store
        instance; dropped by ``delete``), and a read of bytes already in the page
        cache is made on the event loop with ``RWF_NOWAIT``, which fails rather than
        waiting for the disk; otherwise the read runs in a worker thread.

        Raises:
            InvalidArgument: invalid digest, negative offset or size, or offset past
                the end.
            NotFound: no such blob.
        """
        if offset < 0:
            raise InvalidArgument(f"negative offset {offset}")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        # Only valid digests are cached, so a hit needs no validation (nor a path).
        cached = self._read_fds.get(dgst)
        if cached is not None:
            self._read_fds.move_to_end(dgst)
            if offset > cached.size:
                raise InvalidArgument(f"read past object length {cached.size} bytes")
            size = min(size, cached.size - offset)
            hit = self._read_nowait(cached.fd, offset, size)
            if hit is not None:
                return hit
            path = self.blob_path(dgst)
            return await asyncio.to_thread(self._read_cached, dgst, path, offset, size)
        path = self.blob_path(dgst)
        deletions = self._deletions

        def open_and_read() -> tuple[_CachedBlob, bytes]:
            fd = os.open(path, os.O_RDONLY)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise NotFound(f"content {dgst}")
                if offset > st.st_size:
                    raise InvalidArgument(f"read past object length {st.st_size} bytes")
                # Clamped, so a huge request does not size a huge buffer.
                data = _pread_full(fd, offset, min(size, st.st_size - offset))
            except BaseException:
                os.close(fd)
                raise
            return _CachedBlob(fd, st.st_size), data

        task = asyncio.ensure_future(asyncio.to_thread(open_and_read))
        try:
            blob, data = await asyncio.shield(task)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"content {dgst}") from exc
        except asyncio.CancelledError:
            task.add_done_callback(_close_orphaned_blob)
            raise
        if deletions != self._deletions or dgst in self._read_fds:
            os.close(blob.fd)  # a delete ran meanwhile, or another read cached it
        else:
            self._read_fds[dgst] = blob
            if len(self._read_fds) > _READ_FDS:
                os.close(self._read_fds.popitem(last=False)[1].fd)
        return data

    def _read_nowait(self, fd: int, offset: int, size: int) -> bytes | None:
        """The bytes if they are all in the page cache, else None (never waits on I/O)."""
        if not self._nowait or size > _CHUNK:
            return None
        buf = bytearray(size)
        try:
            got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError:
            self._nowait = False  # the file system does not support it
            return None
        return bytes(buf) if got == size else None

    def _read_cached(self, dgst: str, path: Path, offset: int, size: int) -> bytes:
        """A worker-thread read through a descriptor of its own: the cached one may be
        closed by the event loop meanwhile."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"content {dgst}") from exc
        try:
            return _pread_full(fd, offset, size)
        finally:
            os.close(fd)

    def _forget_fd(self, dgst: str) -> None:
        blob = self._read_fds.pop(dgst, None)
        if blob is not None:
            os.close(blob.fd)

    # -- ingests --

    async def status(self, ref: str) -> Status:
        """The ingest ``ref`` as recorded on disk (``expected`` is always "").

        ``updated_at`` is the later of ``updatedat`` and the data file's mtime, since
        ``updatedat`` is only rewritten when a writer closes.

        Raises:
            NotFound: no ingest has that ref.
            FailedPrecondition: the ingest's files are corrupt.
        """
        path = self.ingest_path(ref)
        try:
            st = await asyncio.to_thread(self._read_status, path)
        except _CorruptIngest as exc:
            raise FailedPrecondition(f"ingest ref {go_quote(ref)}: {exc}") from exc
        if st is None or st.ref != ref:
            raise NotFound(f"ingest ref {go_quote(ref)}")
        return st

    async def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """Every readable ingest matching any filter (field ``ref``), ordered by ref.

        Ingests being created or removed meanwhile, and corrupt ones, are skipped.

        Raises:
            InvalidArgument: a filter does not parse.
        """
        flt = filter_lang.parse_all(list(filters))
        statuses = await asyncio.to_thread(self._list_statuses)
        return [st for st in statuses if flt.match(_status_fields(st))]

    def _list_statuses(self) -> list[Status]:
        out: list[Status] = []
        with os.scandir(self._ingest_root) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                try:
                    st = self._read_status(path)
                except (_CorruptIngest, OSError) as exc:
                    logger.warning("skipping ingest %s: %s", path, exc)
                    continue
                # A ref that does not hash to its directory cannot be reached by ref.
                if st is not None and self.ingest_path(st.ref).name == entry.name:
                    out.append(st)
        out.sort(key=lambda st: st.ref)
        return out

    def _read_status(self, path: Path) -> Status | None:
        """The status recorded in an ingest directory, or None when it has no data
        yet (or is gone).

        Raises:
            _CorruptIngest: a timestamp does not parse.
        """
        try:
            data = os.stat(path / "data")
            ref_bytes = (path / "ref").read_bytes()
            started_text = (path / "startedat").read_text("utf-8", "replace")
            updated_text = (path / "updatedat").read_text("utf-8", "replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            ref = ref_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _CorruptIngest("ref is not valid UTF-8") from exc
        try:
            started_at = parse_timestamp(started_text)
        except ValueError as exc:
            raise _CorruptIngest(f"could not read startedat: {exc}") from exc
        try:
            updated_at = parse_timestamp(updated_text)
        except ValueError as exc:
            raise _CorruptIngest(f"could not read updatedat: {exc}") from exc
        return Status(
            ref,
            data.st_size,
            self._read_total(path),
            "",
            started_at,
            max(updated_at, data.st_mtime_ns),
        )

    @staticmethod
    def _read_total(path: Path) -> int:
        try:
            return max(0, int((path / "total").read_text("ascii")))
        except (OSError, ValueError):
            return 0  # unknown, as containerd reads a missing or corrupt total

    async def abort(self, ref: str) -> None:
        """Remove the ingest ``ref``.

        As containerd, this does not wait for a writer holding the ref: that writer
        keeps the ref locked until it is closed, and its commit fails with NotFound.

        Raises:
            NotFound: no ingest has that ref.
        """
        path = self.ingest_path(ref)

        def remove() -> None:
            if not path.exists():
                raise NotFound(f"ingest ref {go_quote(ref)}")
            _remove_all(path)

        await asyncio.to_thread(remove)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> LocalWriter:
        """Open the ingest ``ref``, resuming it if it exists.

        A resume continues at the size of the recorded data (re-hashed to restore the
        digest state). If the recorded ingest cannot be resumed (its files are
        incomplete or corrupt, or it recorded another non-zero ``total``), it is
        started again from empty, as containerd does. A ``total`` given for an ingest
        that recorded none is recorded. The writer hashes with the algorithm of
        ``expected`` when given, else sha256.

        Raises:
            InvalidArgument: empty ref, negative total, or invalid ``expected``.
            Unavailable: another writer holds the ref (``ref ... locked for ...``), after
                ``lock_attempts`` tries.
            AlreadyExists: ``expected`` is already a committed blob.
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if total < 0:
            raise InvalidArgument(f"total must not be negative: {total}")
        algorithm = digests.parse(expected)[0] if expected else digests.CANONICAL
        path = self.ingest_path(ref)
        await self._lock(ref)
        task = asyncio.ensure_future(
            asyncio.to_thread(self._open_writer, ref, path, total, expected, algorithm)
        )
        try:
            writer = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphan)
            raise
        except BaseException:
            self._locks.unlock(ref)
            raise
        self._writers.add(writer)
        return writer

    def _release_orphan(self, task: asyncio.Future[LocalWriter]) -> None:
        """Close a writer whose opener was cancelled, so its ref does not stay locked."""
        if task.cancelled() or task.exception() is not None:
            return  # _open_writer released the lock itself
        writer = task.result()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, writer._close_sync)

    async def _lock(self, ref: str) -> None:
        for attempt in range(self._lock_attempts):
            try:
                self._locks.try_lock(ref)
                return
            except Unavailable:
                if attempt == self._lock_attempts - 1:
                    raise
            await asyncio.sleep(random.randrange(1 << attempt) / 1000)

    def _open_writer(
        self, ref: str, path: Path, total: int, expected: str, algorithm: str
    ) -> LocalWriter:
        """Runs in a worker thread with the ref locked; unlocks on any error."""
        try:
            if expected and self.blob_path(expected).exists():
                raise AlreadyExists(f"content {expected}")
            resumed: _Resumed | None = None
            try:
                path.mkdir(mode=0o755)
            except FileExistsError:
                try:
                    resumed = self._resume(path, ref, total, algorithm)
                except (_CorruptIngest, OSError) as exc:
                    logger.info(
                        "failed to resume the ingest of ref %s: %s; starting again", ref, exc
                    )
                    # Start from a clean directory so no stale total or data survives.
                    _remove_all(path)
                    path.mkdir(mode=0o755)
            if resumed is None:
                now = time.time_ns()
                resumed = _Resumed(0, total, digests.hasher(algorithm), now, now)
                (path / "ref").write_bytes(ref.encode("utf-8"))
                stamp = format_timestamp(now).encode()
                _write_to_completion(path / "startedat", stamp)
                _write_to_completion(path / "updatedat", stamp)
                if total > 0:
                    (path / "total").write_text(str(total), "ascii")
            # The data file comes last: an ingest without it is invisible to status.
            fd = os.open(path / "data", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if resumed.offset == 0:
                    os.ftruncate(fd, 0)
                return LocalWriter(
                    self,
                    ref,
                    path,
                    fd,
                    offset=resumed.offset,
                    total=resumed.total,
                    algorithm=algorithm,
                    hasher=resumed.hasher,
                    expected=expected,
                    started_at=resumed.started_at,
                    updated_at=resumed.updated_at,
                )
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._locks.unlock(ref)
            raise

    def _resume(self, path: Path, ref: str, total: int, algorithm: str) -> _Resumed:
        """Restore an ingest's state from its directory.

        Raises:
            _CorruptIngest: incomplete, another ref, or another total.
            OSError: the data cannot be read.
        """
        st = self._read_status(path)
        if st is None:
            raise _CorruptIngest("no data or ref recorded")
        if st.ref != ref:
            raise _CorruptIngest(f"ref key does not match: {ref} != {st.ref}")
        if total > 0 and st.total > 0 and total != st.total:
            raise _CorruptIngest(f"provided total differs from status: {total} != {st.total}")
        if total > 0 and st.total == 0:
            (path / "total").write_text(str(total), "ascii")
        data = path / "data"
        mode = os.stat(data).st_mode
        if not mode & stat.S_IWUSR:
            # A crash between making the data read-only and renaming it into blobs/.
            os.chmod(data, stat.S_IMODE(mode) | stat.S_IWUSR)
        fd = os.open(data, os.O_RDONLY)
        try:
            hasher, offset = _hash_fd(fd, algorithm)
        finally:
            os.close(fd)
        return _Resumed(offset, st.total or total, hasher, st.started_at, st.updated_at)

    def _install(self, ref: str, ingest: Path, dgst: str, data_mode: int) -> None:
        """Move a verified ingest's data into ``blobs/`` and remove the ingest.

        Runs in the committing writer's thread.

        Raises:
            AlreadyExists: the blob exists (the ingest is removed).
            NotFound: the ingest was aborted.
        """
        target = self.blob_path(dgst)
        created = [p for p in (target.parent.parent, target.parent) if not p.exists()]
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        for p in created:
            _fsync_dir(p.parent)
        if target.exists():
            self._remove_ingest(ref, ingest)
            raise AlreadyExists(f"content {dgst}")
        data = ingest / "data"
        # Read-only before the rename, so the blob is never visible writable; mask as
        # containerd does, keeping the read bits the umask allowed at creation.
        now = time.time_ns()
        try:
            os.chmod(data, stat.S_IMODE(data_mode) & ~0o333)
            os.utime(data, ns=(now, now))
            try:
                os.rename(data, target)
            except BaseException:
                os.chmod(data, stat.S_IMODE(data_mode))
                raise
        except FileNotFoundError as exc:
            raise NotFound(f"ingest ref {go_quote(ref)}") from exc
        _fsync_dir(target.parent)
        self._remove_ingest(ref, ingest)

    @staticmethod
    def _remove_ingest(ref: str, ingest: Path) -> None:
        try:
            _remove_all(ingest)
        except OSError as exc:
            # The blob is (or was already) committed; a leftover ingest is only clutter.
            logger.error("ref %s: failed to remove ingest directory %s: %s", ref, ingest, exc)


if TYPE_CHECKING:

    def _conforms(
        store: LocalStore, writer: LocalWriter, reader: LocalReaderAt
    ) -> tuple[Store, Writer, ReaderAt]:
        return store, writer, reader


__all__ = [
    "DEFAULT_LOCK_ATTEMPTS",
    "LocalReaderAt",
    "LocalStore",
    "LocalWriter",
    "format_timestamp",
    "go_duration",
    "parse_timestamp",
]
