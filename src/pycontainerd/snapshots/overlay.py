"""The overlayfs snapshotter (containerd's ``snapshots/overlay``).

Each snapshot is ``<root>/snapshots/<id>/`` holding ``fs`` (its upper directory: the
changes it makes over its parents) and, when active, ``work`` (overlayfs's workdir).
Mounts, by kind and number of parents:

==========  ==========  ====================================================
kind        parents     mount
==========  ==========  ====================================================
active      none        bind ``fs`` (``rw``, ``rbind``)
active      1 or more   overlay: ``workdir``, ``upperdir``, ``lowerdir``
view        none        bind own (empty) ``fs`` (``ro``, ``rbind``)
view        1           bind the parent's ``fs`` (``ro``, ``rbind``)
view        2 or more   overlay with ``lowerdir`` only (read-only by nature)
==========  ==========  ====================================================

``lowerdir`` lists the nearest parent first. Overlay mounts carry ``index=off`` when the
kernel has the index feature (so a layer shared by several mounts is not tied to the
first one's upper directory) and ``userxattr`` inside a user namespace on kernels that
need it, as containerd decides both.

Creating a snapshot (directories and record) is one metastore transaction, so a crash
leaves either nothing or a ``new-`` directory that ``cleanup`` removes. By default
``remove`` only forgets the snapshot and ``cleanup`` deletes its directory (what
containerd's plugin configures, letting the garbage collector batch the I/O);
``sync_remove=True`` deletes it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from pycontainerd.plugin.registry import SkipPlugin
from pycontainerd.snapshots import _fs
from pycontainerd.snapshots._local import LocalSnapshotter, error_context
from pycontainerd.snapshots.interface import Info, Kind, Mount
from pycontainerd.snapshots.mount import mount, unmount_all
from pycontainerd.snapshots.storage import MetaStore, Snapshot, Transaction

__all__ = [
    "UPPERDIR_LABEL",
    "OverlaySnapshotter",
    "check_overlay",
    "needs_userxattr",
    "supports_index",
]

logger = logging.getLogger(__name__)

UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"


def supports_index() -> bool:
    """Whether the kernel's overlayfs knows ``index=`` (it then exposes the parameter)."""
    return os.path.exists("/sys/module/overlay/parameters/index")


def _try_overlay_mount(root: Path, prefix: str, extra: Sequence[str] = ()) -> None:
    """Mount (then unmount) a two-lower overlay in a scratch directory under ``root``.

    Raises:
        OSError: the mount failed.
    """
    td = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        for name in ("lower1", "lower2", "upper", "work", "merged"):
            (td / name).mkdir()
        options = (
            f"lowerdir={td / 'lower2'}:{td / 'lower1'},upperdir={td / 'upper'},"
            f"workdir={td / 'work'}",
            *extra,
        )
        merged = td / "merged"
        mount(Mount(type="overlay", source="overlay", options=options), merged)
        try:
            unmount_all(merged)
        except OSError:
            logger.warning("failed to unmount check directory %s", merged, exc_info=True)
    finally:
        try:
            _fs.remove_all(td)
        except OSError:
            logger.warning("failed to remove check directory %s", td, exc_info=True)


def check_overlay(root: Path) -> None:
    """Check that overlayfs with several lower directories works on ``root``.

    Raises:
        SkipPlugin: it does not (no overlay module, no privilege, unsuitable file
            system), with the kernel's reason.
    """
    try:
        _try_overlay_mount(root, "multiple-lowerdir-check")
    except OSError as exc:
        raise SkipPlugin(f"overlayfs is not supported on {root}: {exc}") from exc


def needs_userxattr(root: Path) -> bool:
    """Whether overlay mounts under ``root`` need the ``userxattr`` option.

    Never for the initial user namespace; inside another, not on tmpfs (which refuses
    it), always from kernel 5.11, and on older kernels only if a test mount with it
    succeeds (distributions backport it).
    """
    if not _fs.running_in_user_namespace():
        return False
    try:
        if _fs.filesystem_type(root) == _fs.TMPFS_MAGIC:
            return False
    except OSError:
        logger.warning("cannot statfs %s; assuming it is not tmpfs", root, exc_info=True)
    if _fs.kernel_version() >= (5, 11):
        return True
    try:
        _try_overlay_mount(root, "userxattr-check", ("userxattr",))
    except OSError:
        return False
    return True


class OverlaySnapshotter(LocalSnapshotter):
    """Snapshots as overlayfs layers under ``root``. Open with ``await open(root)``."""

    def __init__(
        self,
        root: Path,
        ms: MetaStore,
        *,
        upperdir_label: bool,
        sync_remove: bool,
        mount_options: Sequence[str],
        index_off: bool,
        userxattr: bool,
    ) -> None:
        super().__init__(root, ms, remove_now=sync_remove)
        self._upperdir_label = upperdir_label
        self._mount_options = tuple(mount_options)
        self.index_off = index_off
        self.userxattr = userxattr

    @classmethod
    async def open(
        cls,
        root: str | os.PathLike[str],
        *,
        upperdir_label: bool = False,
        sync_remove: bool = False,
        mount_options: Sequence[str] = (),
    ) -> OverlaySnapshotter:
        """Open (creating if needed) an overlayfs snapshotter at ``root``.

        Args:
            upperdir_label: report each snapshot's upper directory in the
                ``containerd.io/snapshot/overlay.upperdir`` label of stat, update and
                walk results.
            sync_remove: delete a removed snapshot's directory at once, not at the
                next ``cleanup``.
            mount_options: extra options for every overlay mount (not for binds).

        Raises:
            SkipPlugin: overlayfs cannot be mounted here (reason included).
            OSError: ``root`` cannot be created.
            sqlite3.DatabaseError: ``metadata.db`` is unusable.
        """
        path = Path(root).absolute()

        def setup() -> tuple[bool, bool]:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            (path / "snapshots").mkdir(mode=0o700, exist_ok=True)
            check_overlay(path)
            # Read after the check mount, which loads the overlay module if needed.
            return supports_index(), needs_userxattr(path)

        index_off, userxattr = await asyncio.to_thread(setup)
        ms = await MetaStore.open(path / "metadata.db")
        return cls(
            path,
            ms,
            upperdir_label=upperdir_label,
            sync_remove=sync_remove,
            mount_options=mount_options,
            index_off=index_off,
            userxattr=userxattr,
        )

    def upper_path(self, snapshot_id: str) -> Path:
        return self._snapshots_dir / snapshot_id / "fs"

    def work_path(self, snapshot_id: str) -> Path:
        return self._snapshots_dir / snapshot_id / "work"

    def _usage_path(self, snapshot_id: str) -> Path:
        return self.upper_path(snapshot_id)

    def _decorate(self, snapshot_id: str, info: Info) -> Info:
        if not self._upperdir_label:
            return info
        labels = dict(info.labels)
        labels[UPPERDIR_LABEL] = str(self.upper_path(snapshot_id))
        return replace(info, labels=labels)

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Snapshot:
        def txn(tx: Transaction) -> Snapshot:
            with error_context("failed to create snapshot"):
                s = tx.create_snapshot(kind, key, parent, labels)
            td = self._snapshots_dir / f"new-{os.urandom(8).hex()}"
            os.mkdir(td, 0o700)
            tx.on_rollback(lambda: _fs.remove_all(td))
            fs = td / "fs"
            os.mkdir(fs)
            # Explicit modes: the mount root must be 0755 whatever the daemon's umask.
            os.chmod(fs, 0o755)
            if kind == Kind.ACTIVE:
                os.mkdir(td / "work")
                os.chmod(td / "work", 0o711)
            if s.parent_ids:
                # The new layer's root takes its owner from the layer below, so a
                # rootfs owned by a mapped user stays owned by it.
                st = os.stat(self.upper_path(s.parent_ids[0]))
                os.lchown(fs, st.st_uid, st.st_gid)
            final = self._snapshots_dir / s.id
            os.rename(td, final)
            tx.on_rollback(lambda: _fs.remove_all(final))
            return s

        return await self._ms.update(txn)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        if not s.parent_ids:
            # Overlay needs at least one lower directory; a base layer is its own fs.
            flag = "ro" if s.kind == Kind.VIEW else "rw"
            return [Mount(type="bind", source=str(self.upper_path(s.id)), options=(flag, "rbind"))]
        if s.kind != Kind.ACTIVE and len(s.parent_ids) == 1:
            return [
                Mount(
                    type="bind",
                    source=str(self.upper_path(s.parent_ids[0])),
                    options=("ro", "rbind"),
                )
            ]
        options: list[str] = []
        if self.index_off:
            options.append("index=off")
        if self.userxattr:
            options.append("userxattr")
        options.extend(self._mount_options)
        if s.kind == Kind.ACTIVE:
            options.append(f"workdir={self.work_path(s.id)}")
            options.append(f"upperdir={self.upper_path(s.id)}")
        lowers = ":".join(str(self.upper_path(pid)) for pid in s.parent_ids)
        options.append(f"lowerdir={lowers}")
        return [Mount(type="overlay", source="overlay", options=tuple(options))]
