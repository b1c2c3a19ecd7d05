"""The btrfs snapshotter (containerd's ``snapshots/btrfs``): one subvolume per snapshot.

Layout under the root, which must be on btrfs (containerd's)::

    metadata.db        storage.MetaStore
    active/<id>        writable subvolume of an active snapshot
    view/<id>          subvolume of a view (a read-only snapshot of its parent, or a
                       new empty subvolume when it has no parent)
    snapshots/<id>     read-only subvolume of a committed snapshot
    <dir>/rm-<...>     a subvolume being deleted

``prepare`` snapshots the parent's subvolume (or creates an empty one), ``view`` makes
a read-only snapshot, ``commit`` makes a read-only snapshot of the active subvolume
into ``snapshots/`` and then deletes the active one. Mounts are what containerd
returns: type ``btrfs``, source the root's device, options ``subvolid=<n>`` plus
``ro`` for views (``mount -t btrfs -o subvolid=<n> <device> <target>``).

Subvolumes are made and deleted with the btrfs ioctls (``fcntl.ioctl``), as containerd
does through cgo, not with the ``btrfs`` command: the daemon then needs no btrfs-progs,
pays no process start per layer, and gets errno values instead of text to parse.

Creation, commit and removal do their subvolume work inside the metastore
transaction, so a snapshot and its subvolume appear and go together (containerd holds
its bolt transaction the same way); the work is an ioctl, not a copy. Removal renames
the subvolume to ``rm-<id>`` in the transaction and deletes it after. Usage of an
active snapshot is measured as containerd does: ``DiskUsage`` of its subvolume without
a parent, ``DiffUsage`` against the parent's subvolume with one.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import secrets
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pycontainerd.errdefs import NotFound
from pycontainerd.plugin.registry import SkipPlugin
from pycontainerd.snapshots import _fs
from pycontainerd.snapshots._local import LocalSnapshotter, error_context
from pycontainerd.snapshots.interface import Kind, Mount, Usage
from pycontainerd.snapshots.storage import MetaStore, Snapshot, Transaction

__all__ = [
    "BTRFS_SUPER_MAGIC",
    "BtrfsSnapshotter",
    "MountPoint",
    "diff_usage",
    "is_subvolume",
    "lookup_mount",
    "remove_tree",
    "subvolume_create",
    "subvolume_delete",
    "subvolume_id",
    "subvolume_snapshot",
]

logger = logging.getLogger(__name__)

BTRFS_SUPER_MAGIC = 0x9123683E
# The root directory of every subvolume has this inode number, and nothing else does.
BTRFS_FIRST_FREE_OBJECTID = 256

# From <linux/btrfs.h>; every argument struct is 4096 bytes.
_IOC_SUBVOL_CREATE = 0x5000940E  # _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
_IOC_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
_IOC_INO_LOOKUP = 0xD0009412  # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
_IOC_SNAP_CREATE_V2 = 0x50009417  # _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
_ARGS_SIZE = 4096
_VOL_ARGS_NAME = 8  # btrfs_ioctl_vol_args: __s64 fd; char name[4088]
_VOL_ARGS_NAME_MAX = 4087
_V2_FLAGS = 16  # btrfs_ioctl_vol_args_v2: fd, transid, flags, 32-byte union, name
_V2_NAME = 56
_V2_NAME_MAX = 4039
_SUBVOL_RDONLY = 1 << 1

_KIND_DIRS = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "snapshots"}


# --- subvolume primitives (blocking) ----------------------------------------------------


def _ioctl_error(exc: OSError, what: str) -> OSError:
    # fcntl.ioctl's errors name no path; OSError(errno, text) keeps the subclass
    # (FileNotFoundError, ...) callers test for.
    code = exc.errno if exc.errno is not None else errno.EIO
    return OSError(code, f"{os.strerror(code)}: {what}")


def _name_bytes(name: str, limit: int) -> bytes:
    raw = os.fsencode(name)
    if not raw or len(raw) > limit or b"/" in raw:
        raise OSError(errno.ENAMETOOLONG if raw else errno.EINVAL, f"bad subvolume name {name!r}")
    return raw


def _open_dir(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def is_subvolume(st: os.stat_result) -> bool:
    """Whether an ``lstat`` result (of a path on btrfs) is a subvolume's root."""
    return stat.S_ISDIR(st.st_mode) and st.st_ino == BTRFS_FIRST_FREE_OBJECTID


def subvolume_create(path: str | os.PathLike[str]) -> None:
    """``btrfs subvolume create path``: a new, empty subvolume.

    Its root directory gets the mode ``0777 & ~umask`` from the kernel.

    Raises:
        FileExistsError: ``path`` exists. OSError: another ioctl failure.
    """
    parent, name = os.path.split(os.path.abspath(path))
    args = bytearray(_ARGS_SIZE)
    raw = _name_bytes(name, _VOL_ARGS_NAME_MAX)
    args[_VOL_ARGS_NAME : _VOL_ARGS_NAME + len(raw)] = raw
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, _IOC_SUBVOL_CREATE, args)
    except OSError as exc:
        raise _ioctl_error(exc, f"btrfs subvolume create {path}") from exc
    finally:
        os.close(fd)


def subvolume_snapshot(
    source: str | os.PathLike[str], target: str | os.PathLike[str], *, readonly: bool
) -> None:
    """``btrfs subvolume snapshot [-r] source target``.

    Subvolumes nested in ``source`` are not included (they show as empty directories).

    Raises:
        FileNotFoundError: ``source`` or ``target``'s directory is missing.
        FileExistsError: ``target`` exists. OSError: another ioctl failure (EXDEV
        across file systems, EINVAL when ``source`` is not a subvolume).
    """
    parent, name = os.path.split(os.path.abspath(target))
    args = bytearray(_ARGS_SIZE)
    raw = _name_bytes(name, _V2_NAME_MAX)
    args[_V2_NAME : _V2_NAME + len(raw)] = raw
    what = f"btrfs subvolume snapshot{' -r' if readonly else ''} {source} {target}"
    try:
        src = _open_dir(source)
    except OSError as exc:
        raise OSError(exc.errno or errno.EIO, f"{exc.strerror}: {what}") from exc
    try:
        struct.pack_into("=qQQ", args, 0, src, 0, _SUBVOL_RDONLY if readonly else 0)
        dst = _open_dir(parent)
        try:
            fcntl.ioctl(dst, _IOC_SNAP_CREATE_V2, args)
        except OSError as exc:
            raise _ioctl_error(exc, what) from exc
        finally:
            os.close(dst)
    finally:
        os.close(src)


def subvolume_id(path: str | os.PathLike[str]) -> int:
    """The id of the subvolume holding ``path`` (what ``subvolid=`` mounts).

    Raises:
        OSError: ``path`` cannot be opened, or is not on btrfs (ENOTTY).
    """
    args = bytearray(_ARGS_SIZE)
    struct.pack_into("=QQ", args, 0, 0, BTRFS_FIRST_FREE_OBJECTID)
    fd = _open_dir(path)
    try:
        fcntl.ioctl(fd, _IOC_INO_LOOKUP, args)
    except OSError as exc:
        raise _ioctl_error(exc, f"btrfs inspect-internal rootid {path}") from exc
    finally:
        os.close(fd)
    (treeid,) = struct.unpack_from("=Q", args, 0)
    return int(treeid)


def _destroy(path: str) -> None:
    parent, name = os.path.split(path)
    args = bytearray(_ARGS_SIZE)
    raw = _name_bytes(name, _VOL_ARGS_NAME_MAX)
    args[_VOL_ARGS_NAME : _VOL_ARGS_NAME + len(raw)] = raw
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, _IOC_SNAP_DESTROY, args)
    except OSError as exc:
        raise _ioctl_error(exc, f"btrfs subvolume delete {path}") from exc
    finally:
        os.close(fd)


def _delete_nested(top: str) -> None:
    """Delete every subvolume below the directory ``top`` (not ``top`` itself)."""
    pending = [top]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                entries = list(it)
        except FileNotFoundError:
            continue  # deleted meanwhile (a concurrent cleanup or remove)
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if is_subvolume(st):
                subvolume_delete(entry.path)
            elif stat.S_ISDIR(st.st_mode):
                pending.append(entry.path)


def subvolume_delete(path: str | os.PathLike[str]) -> None:
    """``btrfs subvolume delete path``, first deleting subvolumes nested in it.

    A container may create subvolumes inside its root file system, and the kernel
    refuses to delete a subvolume that holds others (ENOTEMPTY); only then is the tree
    walked to find them, so the common case costs one ioctl.

    Raises:
        FileNotFoundError: ``path`` does not exist. OSError: the ioctl failed.
    """
    p = os.path.abspath(path)
    try:
        _destroy(p)
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        _delete_nested(p)
        _destroy(p)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove whatever is at ``path``: a subvolume, a directory (with any subvolumes
    inside), or a file. A missing path is not an error.

    Raises:
        OSError: something could not be removed.
    """
    p = os.path.abspath(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    try:
        if is_subvolume(st):
            subvolume_delete(p)
            return
        if stat.S_ISDIR(st.st_mode):
            _delete_nested(p)
        _fs.remove_all(p)
    except FileNotFoundError:
        # Removed by someone else meanwhile (cleanup and remove may race on rm-*).
        if os.path.lexists(p):
            raise


# --- mount table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MountPoint:
    """One ``/proc/self/mountinfo`` entry: where, which file system, from what."""

    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo.
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def lookup_mount(path: str | os.PathLike[str]) -> MountPoint:
    """The mount ``path`` is on (containerd's ``mount.Lookup``): the entry with the
    longest mount point containing ``path``; of several stacked there, the top one.

    Raises:
        OSError: the mount table cannot be read, or no entry contains ``path``.
    """
    target = os.path.realpath(path)
    best: MountPoint | None = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.rstrip("\n").split(" ")
            try:
                sep = fields.index("-", 6)
                point = _unescape(fields[4])
                entry = MountPoint(point, fields[sep + 1], _unescape(fields[sep + 2]))
            except (ValueError, IndexError):
                continue
            inside = target == point or point == "/" or target.startswith(point.rstrip("/") + "/")
            # ">=": later lines are mounted over earlier ones at the same point.
            if inside and (best is None or len(point) >= len(best.mountpoint)):
                best = entry
    if best is None:
        raise OSError(errno.ENOENT, f"failed to find the mount info for {target!r}")
    return best


# --- usage --------------------------------------------------------------------------------


def _capability(path: str) -> bytes | None:
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(32 * 1024), fb.read(32 * 1024)
            if ca != cb:
                return False
            if not ca:
                return True


def _same_file(lower: str, lst: os.stat_result, upper: str, ust: os.stat_result) -> bool:
    """continuity's ``sameFile``: same metadata, and for non-directories same size,
    mtime and (when both mtimes lack nanoseconds, as after a tar) same content."""
    if os.path.samestat(lst, ust):
        return True
    if (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_rdev) != (
        ust.st_mode,
        ust.st_uid,
        ust.st_gid,
        ust.st_rdev,
    ):
        return False
    if _capability(lower) != _capability(upper):
        return False
    if stat.S_ISDIR(lst.st_mode):
        return True
    if lst.st_size != ust.st_size:
        return False
    lsec, lns = divmod(lst.st_mtime_ns, 1_000_000_000)
    usec, uns = divmod(ust.st_mtime_ns, 1_000_000_000)
    if lsec != usec:
        return False
    if lns == 0 and uns == 0:
        if stat.S_ISLNK(lst.st_mode):
            return os.readlink(lower) == os.readlink(upper)
        return lst.st_size == 0 or _same_content(lower, upper)
    return lns == uns


def diff_usage(lower: str | os.PathLike[str], upper: str | os.PathLike[str]) -> Usage:
    """continuity's ``fs.DiffUsage``: blocks and distinct inodes of what ``upper`` adds
    or changes relative to ``lower`` (the roots themselves are not counted).

    An entry counts when ``lower`` has nothing at its path, or has an entry that is not
    the same (``_same_file``); below a directory that ``lower`` lacks (or has as a
    non-directory) everything counts. Directories compare by mode and owner only, so a
    directory that merely gained entries does not count, its new entries do.

    Raises:
        OSError: a tree cannot be read (FileNotFoundError when a root is missing).
    """
    seen: set[tuple[int, int]] = set()
    size = 0
    os.lstat(lower)
    os.lstat(upper)
    pending: list[tuple[str | None, str]] = [(os.fspath(lower), os.fspath(upper))]
    while pending:
        ldir, udir = pending.pop()
        below: dict[str, os.DirEntry[str]] = {}
        if ldir is not None:
            with os.scandir(ldir) as it:
                below = {e.name: e for e in it}
        with os.scandir(udir) as it:
            entries = list(it)
        for entry in entries:
            ust = entry.stat(follow_symlinks=False)
            counterpart = below.get(entry.name)
            lst = counterpart.stat(follow_symlinks=False) if counterpart is not None else None
            if lst is None or not _same_file(below[entry.name].path, lst, entry.path, ust):
                key = (ust.st_dev, ust.st_ino)
                if key not in seen:
                    seen.add(key)
                    size += ust.st_blocks * 512
            if stat.S_ISDIR(ust.st_mode):
                # Children pair up only when both sides are directories.
                paired = None
                if lst is not None and stat.S_ISDIR(lst.st_mode):
                    paired = below[entry.name].path
                pending.append((paired, entry.path))
    return Usage(size=size, inodes=len(seen))


# --- the snapshotter ----------------------------------------------------------------------


class BtrfsSnapshotter(LocalSnapshotter):
    """Snapshots as btrfs subvolumes under ``root``. Open with ``await open(root)``."""

    def __init__(self, root: Path, ms: MetaStore, device: str) -> None:
        super().__init__(root, ms, remove_now=True)
        self.device = device

    @classmethod
    async def open(cls, root: str | os.PathLike[str]) -> BtrfsSnapshotter:
        """Open (creating if needed) a btrfs snapshotter at ``root``.

        ``root`` is made (or chmod-ed to) 0700, as containerd does, before its file
        system is checked.

        Raises:
            SkipPlugin: ``root`` is not on btrfs (``path <root> (<fstype>) must be a
                btrfs filesystem to be used with the btrfs snapshotter``).
            OSError: ``root`` cannot be created or examined, or its mount is not in
                the mount table.
            sqlite3.DatabaseError: ``metadata.db`` is unusable.
        """
        path = Path(root).absolute()

        def setup() -> str:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(path.stat().st_mode) != 0o700:
                os.chmod(path, 0o700)
            magic = _fs.filesystem_type(path)
            if magic != BTRFS_SUPER_MAGIC:
                try:
                    fstype = lookup_mount(path).fstype
                except OSError:
                    fstype = f"{magic:#x}"
                raise SkipPlugin(
                    f"path {os.fspath(root)} ({fstype}) must be a btrfs filesystem to be "
                    "used with the btrfs snapshotter"
                )
            device = lookup_mount(path).source
            for name in _KIND_DIRS.values():
                (path / name).mkdir(mode=0o755, exist_ok=True)
            return device

        device = await asyncio.to_thread(setup)
        return cls(path, await MetaStore.open(path / "metadata.db"), device)

    # --- paths and hooks ----------------------------------------------------------------

    def subvolume_path(self, kind: Kind, snapshot_id: str) -> Path:
        """Where the subvolume of a snapshot of ``kind`` lives."""
        return self.root / _KIND_DIRS[kind] / snapshot_id

    def _usage_path(self, snapshot_id: str) -> Path:
        return self.subvolume_path(Kind.ACTIVE, snapshot_id)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        """Blocking (one ioctl for the subvolume id): call it on the metastore thread.

        Raises:
            OSError: the subvolume is missing.
        """
        subvolid = subvolume_id(self.subvolume_path(s.kind, s.id))
        options = [f"subvolid={subvolid}"]
        if s.kind != Kind.ACTIVE:
            options.append("ro")
        # Not a uuid: containerd notes those do not mount reliably when missing.
        return [Mount(type="btrfs", source=self.device, options=tuple(options))]

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Snapshot:
        s, _ = await self._create_with_mounts(kind, key, parent, labels)
        return s

    async def _create_with_mounts(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> tuple[Snapshot, list[Mount]]:
        def txn(tx: Transaction) -> tuple[Snapshot, list[Mount]]:
            with error_context("failed to create snapshot"):
                s = tx.create_snapshot(kind, key, parent, labels)
            target = self.subvolume_path(kind, s.id)
            # An id is only reused after a creation whose transaction never committed
            # (a crash); whatever that left at the path belongs to no snapshot.
            remove_tree(target)
            if s.parent_ids:
                source = self.subvolume_path(Kind.COMMITTED, s.parent_ids[0])
                subvolume_snapshot(source, target, readonly=kind == Kind.VIEW)
                tx.on_rollback(lambda: remove_tree(target))
            else:
                subvolume_create(target)
                tx.on_rollback(lambda: remove_tree(target))
                # The kernel applies the umask; a mount root must be 0755 regardless.
                os.chmod(target, 0o755)
            return s, self._mounts(s)

        return await self._ms.update(txn)

    def _active_measure(self, tx: Transaction, key: str) -> tuple[str, Kind, Usage, str | None]:
        """(id, kind, stored usage, parent id) of ``key``; the parent id only for an
        active snapshot, which is measured against it.

        Raises:
            NotFound.
        """
        sid, info, usage = tx.get_info(key)
        parent_id: str | None = None
        if info.kind == Kind.ACTIVE and info.parent:
            parent_id, _, _ = tx.get_info(info.parent)
        return sid, info.kind, usage, parent_id

    def _measure(self, snapshot_id: str, parent_id: str | None) -> Usage:
        upper = self.subvolume_path(Kind.ACTIVE, snapshot_id)
        if parent_id is None:
            return _fs.disk_usage(upper)
        return diff_usage(self.subvolume_path(Kind.COMMITTED, parent_id), upper)

    # --- the Snapshotter protocol -------------------------------------------------------

    async def usage(self, key: str) -> Usage:
        """Stored usage of a committed or view snapshot; measured now for an active one
        (its own files, or what differs from its parent's).

        Raises:
            NotFound: no such snapshot (or it was removed while being measured).
            OSError: its subvolume could not be read.
        """
        sid, kind, usage, parent_id = await self._ms.view(lambda tx: self._active_measure(tx, key))
        if kind != Kind.ACTIVE:
            return usage
        try:
            return await asyncio.to_thread(self._measure, sid, parent_id)
        except FileNotFoundError as exc:
            raise NotFound("snapshot does not exist") from exc

    async def mounts(self, key: str) -> list[Mount]:
        """Mounts of an active or view snapshot.

        Raises:
            NotFound; FailedPrecondition for a committed snapshot; OSError when its
            subvolume is missing.
        """

        def txn(tx: Transaction) -> list[Mount]:
            with error_context("failed to get active snapshot"):
                s = tx.get_snapshot(key)
            return self._mounts(s)

        return await self._ms.view(txn)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new writable subvolume: a snapshot of ``parent``'s, or an empty one.

        If the caller is cancelled, the creation still completes or is undone; a stat
        tells which.

        Raises:
            AlreadyExists: the key is taken. NotFound: no such parent.
            InvalidArgument: the parent is not committed. OSError: the subvolume could
            not be made.
        """
        _, mounts = await self._create_with_mounts(Kind.ACTIVE, key, parent, labels)
        return mounts

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A read-only snapshot of ``parent``'s subvolume (an empty subvolume, mounted
        read-only, without a parent); same errors as ``prepare``."""
        _, mounts = await self._create_with_mounts(Kind.VIEW, key, parent, labels)
        return mounts

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Snapshot the active ``key`` read-only as the committed ``name`` and delete
        the active subvolume, recording its usage.

        Raises:
            NotFound: no such key. AlreadyExists: name taken.
            FailedPrecondition: ``key`` is not active (a view or committed).
            OSError: the subvolume could not be measured or snapshotted.
        """
        sid, kind, _, parent_id = await self._ms.view(lambda tx: self._active_measure(tx, key))
        # Measured outside the transaction so a large tree does not hold up the others;
        # a view or committed key fails in the transaction without being measured.
        measured: Usage | None = None
        if kind == Kind.ACTIVE:
            measured = await asyncio.to_thread(self._measure, sid, parent_id)

        def txn(tx: Transaction) -> Path:
            current, current_kind, _, current_parent = self._active_measure(tx, key)
            usage = measured
            if usage is None or current != sid:
                # Removed and prepared again meanwhile, or not active (the commit below
                # then raises before the value matters).
                usage = (
                    self._measure(current, current_parent)
                    if current_kind == Kind.ACTIVE
                    else Usage()
                )
            with error_context("failed to commit snapshot"):
                committed = tx.commit_active(key, name, usage, labels)
            source = self.subvolume_path(Kind.ACTIVE, committed)
            target = self.subvolume_path(Kind.COMMITTED, committed)
            # Left by a commit whose transaction did not complete: not the snapshot's.
            remove_tree(target)
            subvolume_snapshot(source, target, readonly=True)
            tx.on_rollback(lambda: remove_tree(target))
            return source

        source = await self._ms.update(txn)
        try:
            await asyncio.to_thread(remove_tree, source)
        except OSError:
            # The commit stands; cleanup deletes the active subvolume later.
            logger.warning("failed to delete subvolume %s", source, exc_info=True)

    async def remove(self, key: str) -> None:
        """Forget ``key`` and delete its subvolume.

        Raises:
            NotFound, or FailedPrecondition when it still has children.
        """

        def txn(tx: Transaction) -> Path | None:
            with error_context("failed to remove snapshot"):
                sid, kind = tx.remove(key)
            path = self.subvolume_path(kind, sid)
            doomed = path.parent / f"rm-{sid}"
            remove_tree(doomed)  # only ever a leftover: ids are not reused once recorded
            try:
                # A rename (allowed for read-only subvolumes too) rather than
                # containerd's snapshot-and-delete: atomic, and undone by renaming back.
                os.rename(path, doomed)
            except FileNotFoundError:
                return None
            tx.on_rollback(lambda: os.rename(doomed, path))
            return doomed

        doomed = await self._ms.update(txn)
        if doomed is not None:
            try:
                await asyncio.to_thread(remove_tree, doomed)
            except OSError:
                # The snapshot is gone either way; cleanup retries the subvolume.
                logger.warning("failed to delete subvolume %s", doomed, exc_info=True)

    async def cleanup(self) -> None:
        """Delete every entry of ``active/``, ``view/`` and ``snapshots/`` that is not
        the subvolume of a snapshot of that kind (crash leftovers, failed deletions).

        containerd's btrfs snapshotter has no cleanup; this one's mirrors overlayfs's.

        Raises:
            OSError: a directory cannot be listed. An entry that cannot be deleted is
            logged and left for the next cleanup.
        """

        def txn(tx: Transaction) -> list[Path]:
            # A write transaction, so no creation, commit or removal interleaves.
            live: dict[Kind, set[str]] = {k: set() for k in _KIND_DIRS}
            for sid, info in tx.walk_info():
                live[info.kind].add(sid)
            doomed: list[Path] = []
            for kind, dirname in _KIND_DIRS.items():
                directory = self.root / dirname
                for name in os.listdir(directory):
                    if name in live[kind]:
                        continue
                    path = directory / name
                    if not name.startswith("rm-"):
                        # Out of the way of the id, which a later creation may reuse
                        # after a crash, before it is deleted outside the transaction.
                        moved = directory / f"rm-gc-{secrets.token_hex(8)}"
                        os.rename(path, moved)
                        path = moved
                    doomed.append(path)
            return doomed

        for path in await self._ms.update(txn):
            try:
                await asyncio.to_thread(remove_tree, path)
            except OSError:
                logger.warning("failed to remove %s", path, exc_info=True)
