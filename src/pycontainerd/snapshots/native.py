"""The native snapshotter (containerd's ``snapshots/native``): full copies, bind mounts.

Each active snapshot is a directory ``<root>/snapshots/<id>`` holding a complete copy
of its parent's tree plus its own changes; it works on any file system, at the price
of copying. Mounts are binds (``rbind`` plus ``rw`` or ``ro``): an active snapshot or
a view without parent binds its own directory, a view of a parent binds the parent's
directory read-only (views copy nothing).

The copy (modes, owners, times, xattrs, symlinks, hard links, device nodes) is made in
a ``new-`` directory outside the metastore transaction, so other calls are not held up
by it; the record is then written and the directory renamed to its id in one
transaction. ``remove`` deletes the directory at once (renamed to ``rm-<id>`` in the
transaction first); ``cleanup`` takes whatever a crash left behind.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from pycontainerd.errdefs import ContainerdError, FailedPrecondition
from pycontainerd.identifiers import go_quote
from pycontainerd.snapshots import _fs
from pycontainerd.snapshots._local import LocalSnapshotter, error_context
from pycontainerd.snapshots.interface import Kind, Mount
from pycontainerd.snapshots.storage import MetaStore, Snapshot, Transaction

__all__ = ["NativeSnapshotter"]


class NativeSnapshotter(LocalSnapshotter):
    """Snapshots as plain directory copies under ``root``. Open with ``await open(root)``."""

    def __init__(self, root: Path, ms: MetaStore) -> None:
        super().__init__(root, ms, remove_now=True)
        self._creations: set[asyncio.Task[Snapshot]] = set()

    @classmethod
    async def open(cls, root: str | os.PathLike[str]) -> NativeSnapshotter:
        """Open (creating if needed) a native snapshotter at ``root``.

        Raises:
            OSError: ``root`` cannot be created.
            sqlite3.DatabaseError: ``metadata.db`` is unusable.
        """
        path = Path(root).absolute()

        def setup() -> None:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            (path / "snapshots").mkdir(mode=0o700, exist_ok=True)

        await asyncio.to_thread(setup)
        return cls(path, await MetaStore.open(path / "metadata.db"))

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self._snapshots_dir / snapshot_id

    def _usage_path(self, snapshot_id: str) -> Path:
        return self.snapshot_path(snapshot_id)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        flag = "ro" if s.kind == Kind.VIEW else "rw"
        if not s.parent_ids or s.kind == Kind.ACTIVE:
            source = self.snapshot_path(s.id)
        else:
            source = self.snapshot_path(s.parent_ids[0])
        return [Mount(type="bind", source=str(source), options=("rbind", flag))]

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Snapshot:
        if kind == Kind.VIEW and parent:

            def record(tx: Transaction) -> Snapshot:
                with error_context("failed to create snapshot"):
                    return tx.create_snapshot(kind, key, parent, labels)

            return await self._ms.update(record)
        # A copy cannot be interrupted half way without leaving a mess, so it runs as
        # its own task that finishes (or undoes itself) even if the caller goes away.
        task = asyncio.create_task(self._create_with_directory(kind, key, parent, labels))
        self._creations.add(task)
        task.add_done_callback(self._creations.discard)
        return await asyncio.shield(task)

    async def _create_with_directory(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Snapshot:
        # Fail before copying anything when the request cannot succeed.
        with error_context("failed to create snapshot"):
            parent_ids = await self._ms.view(lambda tx: tx.validate_create(kind, key, parent))
        name = self._new_temp_name()
        td = self._snapshots_dir / name
        try:
            try:
                await asyncio.to_thread(self._fill, td, parent_ids[:1])
            except OSError as exc:
                # The usual cause is the parent being removed under the copy: say so.
                try:
                    with error_context("failed to create snapshot"):
                        await self._ms.view(lambda tx: tx.validate_create(kind, key, parent))
                except ContainerdError as reason:
                    raise reason from exc
                raise

            def record(tx: Transaction) -> Snapshot:
                with error_context("failed to create snapshot"):
                    s = tx.create_snapshot(kind, key, parent, labels)
                if s.parent_ids[:1] != parent_ids[:1]:
                    raise FailedPrecondition(
                        f"parent {go_quote(parent)} was replaced while it was copied"
                    )
                final = self.snapshot_path(s.id)
                os.rename(td, final)
                tx.on_rollback(lambda: os.rename(final, td))
                return s

            return await self._ms.update(record)
        except BaseException:
            await asyncio.to_thread(_fs.remove_all, td)
            raise
        finally:
            self._release_temp_name(name)

    def _fill(self, td: Path, parent: tuple[str, ...]) -> None:
        os.mkdir(td, 0o700)
        os.chmod(td, 0o755)
        if parent:
            _fs.copy_dir(self.snapshot_path(parent[0]), td)

    async def aclose(self) -> None:
        """Wait for creations still copying, then close; closing twice is fine."""
        if self._creations:
            await asyncio.gather(*self._creations, return_exceptions=True)
        await super().aclose()
