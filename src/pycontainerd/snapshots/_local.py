"""What the overlayfs and native snapshotters share: a metastore plus ``snapshots/<id>``.

Layout under a snapshotter's root (containerd's)::

    metadata.db           storage.MetaStore
    snapshots/<id>/       one directory per snapshot, named by its storage id
    snapshots/new-<rand>  a snapshot being created (renamed to its id when recorded)
    snapshots/rm-<id>     a snapshot being deleted

A directory whose name is not a recorded id is garbage: ``cleanup`` deletes it, except
the ``new-`` directories of creations still in progress. Ids are never reused, so a
directory left behind can never be mistaken for a later snapshot's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from pycontainerd.errdefs import ContainerdError, NotFound
from pycontainerd.snapshots import _fs
from pycontainerd.snapshots.interface import Info, Kind, Mount, Usage
from pycontainerd.snapshots.storage import MetaStore, Snapshot, Transaction

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def error_context(prefix: str) -> Iterator[None]:
    """Re-raise a ContainerdError of the same kind with ``prefix: `` before its message
    (Go's ``fmt.Errorf("prefix: %w", err)``)."""
    try:
        yield
    except ContainerdError as exc:
        message = f"{prefix}: {exc.message}" if exc.message else prefix
        raise type(exc)(message) from exc


class LocalSnapshotter:
    """Base of the snapshotters that keep snapshots as directories under ``root``.

    Subclasses say where a snapshot's own data lives (``_usage_path``), how to mount
    it (``_mounts``) and how to create it (``_create``).
    """

    def __init__(self, root: Path, ms: MetaStore, *, remove_now: bool) -> None:
        self.root = root
        self._ms = ms
        self._remove_now = remove_now
        self._snapshots_dir = root / "snapshots"
        # Names of new-* directories being filled outside a transaction; cleanup
        # must not take them. Read on the metastore thread, hence the lock.
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()

    # --- hooks --------------------------------------------------------------------------

    def _usage_path(self, snapshot_id: str) -> Path:
        raise NotImplementedError

    def _mounts(self, s: Snapshot) -> list[Mount]:
        raise NotImplementedError

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Snapshot:
        raise NotImplementedError

    def _decorate(self, snapshot_id: str, info: Info) -> Info:
        """The info as callers see it (overlay may add its upperdir label)."""
        return info

    # --- helpers ------------------------------------------------------------------------

    def _new_temp_name(self) -> str:
        """A fresh ``new-`` name, registered as in flight before it exists on disk."""
        name = f"new-{secrets.token_hex(8)}"
        with self._in_flight_lock:
            self._in_flight.add(name)
        return name

    def _release_temp_name(self, name: str) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(name)

    # --- the Snapshotter protocol -------------------------------------------------------

    async def stat(self, key: str) -> Info:
        """Raises NotFound."""

        def txn(tx: Transaction) -> Info:
            sid, info, _ = tx.get_info(key)
            return self._decorate(sid, info)

        return await self._ms.view(txn)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change labels (``labels`` / ``labels.<k>`` paths; none means all labels).

        Raises:
            NotFound; InvalidArgument for another field path.
        """
        paths = list(fieldpaths)

        def txn(tx: Transaction) -> Info:
            updated = tx.update_info(info, paths)
            sid, _, _ = tx.get_info(updated.name)
            return self._decorate(sid, updated)

        return await self._ms.update(txn)

    async def usage(self, key: str) -> Usage:
        """Stored usage of a committed or view snapshot; measured now for an active one.

        Raises:
            NotFound: no such snapshot (or it was removed while being measured).
            OSError: its directory could not be read.
        """
        sid, info, usage = await self._ms.view(lambda tx: tx.get_info(key))
        if info.kind != Kind.ACTIVE:
            return usage
        try:
            return await asyncio.to_thread(_fs.disk_usage, self._usage_path(sid))
        except FileNotFoundError as exc:
            raise NotFound("snapshot does not exist") from exc

    async def mounts(self, key: str) -> list[Mount]:
        """Mounts of an active or view snapshot.

        Raises:
            NotFound; FailedPrecondition for a committed snapshot.
        """
        with error_context("failed to get active mount"):
            s = await self._ms.view(lambda tx: tx.get_snapshot(key))
        return self._mounts(s)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new writable snapshot on ``parent`` (committed), returning its mounts.

        If the caller is cancelled, the creation still completes or is undone in the
        background; a stat tells which.

        Raises:
            AlreadyExists: the key is taken. NotFound: no such parent.
            InvalidArgument: the parent is not committed. OSError: the directory
            could not be made.
        """
        return self._mounts(await self._create(Kind.ACTIVE, key, parent, labels))

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A read-only snapshot of ``parent``; same errors as ``prepare``."""
        return self._mounts(await self._create(Kind.VIEW, key, parent, labels))

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active ``key`` into the committed ``name``, recording its usage.

        Raises:
            NotFound: no such key. AlreadyExists: name taken.
            FailedPrecondition: ``key`` is not active (a view or committed).
            OSError: the snapshot's directory could not be measured.
        """
        sid, info, _ = await self._ms.view(lambda tx: tx.get_info(key))
        # Measure outside the transaction so a large tree does not hold up the others;
        # a view or committed key fails in the transaction without being measured.
        measured: Usage | None = None
        if info.kind == Kind.ACTIVE:
            measured = await asyncio.to_thread(_fs.disk_usage, self._usage_path(sid))

        def txn(tx: Transaction) -> None:
            current, current_info, _ = tx.get_info(key)
            usage = measured
            if usage is None or current != sid:
                # Removed and prepared again meanwhile, or not active (the commit below
                # then raises before the value matters).
                usage = (
                    _fs.disk_usage(self._usage_path(current))
                    if current_info.kind == Kind.ACTIVE
                    else Usage()
                )
            with error_context("failed to commit snapshot"):
                tx.commit_active(key, name, usage, labels)

        await self._ms.update(txn)

    async def remove(self, key: str) -> None:
        """Forget ``key``; its directory goes now or at the next ``cleanup``.

        Raises:
            NotFound, or FailedPrecondition when it still has children.
        """

        def txn(tx: Transaction) -> Path | None:
            with error_context("failed to remove"):
                sid, _ = tx.remove(key)
            if not self._remove_now:
                return None
            path = self._snapshots_dir / sid
            doomed = self._snapshots_dir / f"rm-{sid}"
            try:
                # Renamed in the transaction so the id's directory never exists
                # half-deleted, and moved back if the removal does not commit.
                os.rename(path, doomed)
            except FileNotFoundError:
                return None
            tx.on_rollback(lambda: os.rename(doomed, path))
            return doomed

        doomed = await self._ms.update(txn)
        if doomed is not None:
            try:
                await asyncio.to_thread(_fs.remove_all, doomed)
            except OSError:
                # The snapshot is gone either way; cleanup retries the directory.
                logger.warning("failed to remove snapshot directory %s", doomed, exc_info=True)

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every snapshot matching any filter (fields: kind, name, parent, labels.<k>),
        in key order, as of one transaction.

        Raises:
            InvalidArgument: a filter does not parse.
        """
        wanted = list(filters)
        entries = await self._ms.view(lambda tx: tx.walk_info(wanted))
        for sid, info in entries:
            yield self._decorate(sid, info)

    async def cleanup(self) -> None:
        """Delete every directory under ``snapshots/`` that no snapshot owns.

        Raises:
            OSError: ``snapshots/`` cannot be listed. A directory that cannot be
            deleted is logged and left for the next cleanup.
        """

        def txn(tx: Transaction) -> list[Path]:
            # A write transaction, so no creation or removal interleaves with the scan.
            ids = tx.id_map()
            with self._in_flight_lock:
                busy = set(self._in_flight)
            return [
                self._snapshots_dir / name
                for name in os.listdir(self._snapshots_dir)
                if name not in ids and name not in busy
            ]

        for path in await self._ms.update(txn):
            try:
                await asyncio.to_thread(_fs.remove_all, path)
            except OSError:
                logger.warning("failed to remove directory %s", path, exc_info=True)

    async def aclose(self) -> None:
        """Close the metastore; closing twice is fine. Later calls raise Unavailable."""
        await self._ms.aclose()
