"""Blocking file-system helpers shared by the local snapshotters (run them in threads).

``disk_usage`` is continuity's ``fs.DiskUsage``; ``copy_dir`` is its ``fs.CopyDir``
as the native snapshotter uses it (xattr errors ignored); ``remove_all`` is
``os.RemoveAll``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from pycontainerd.snapshots.interface import Usage

logger = logging.getLogger(__name__)

# st_blocks counts 512-byte units whatever the file system's block size (stat(2)).
_BLOCK_UNIT = 512
TMPFS_MAGIC = 0x01021994


def disk_usage(*roots: str | os.PathLike[str]) -> Usage:
    """Allocated bytes and distinct inodes under ``roots``, the roots included.

    Each inode counts once, so hard links are not double counted; the size is what
    the blocks take (``st_blocks * 512``), not the files' apparent lengths.

    Raises:
        OSError: a root or an entry cannot be read.
    """
    seen: set[tuple[int, int]] = set()
    size = 0
    for root in roots:
        st = os.lstat(root)
        pending = [os.fspath(root)] if stat.S_ISDIR(st.st_mode) else []
        seen.add((st.st_dev, st.st_ino))
        size += st.st_blocks * _BLOCK_UNIT
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    est = entry.stat(follow_symlinks=False)
                    key = (est.st_dev, est.st_ino)
                    if key not in seen:
                        seen.add(key)
                        size += est.st_blocks * _BLOCK_UNIT
                    if stat.S_ISDIR(est.st_mode):
                        pending.append(entry.path)
    return Usage(size=size, inodes=len(seen))


def remove_all(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything below it; a missing path is not an error.

    Raises:
        OSError: something could not be removed.
    """

    def onerror(
        fn: Callable[..., object],
        name: str,
        exc_info: tuple[type[BaseException], BaseException, object],
    ) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        raise exc

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, onerror=onerror)
    else:
        os.unlink(path)


def copy_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the tree ``src`` into the directory ``dst`` (created if missing).

    Preserves file types (regular, directory, symlink, device, fifo, socket), modes
    including set-id bits, owners, access and modification times, extended attributes,
    and hard links between files of the tree. Extended attributes that cannot be read
    or set (``security.*`` without privilege, ``user.*`` on symlinks) are skipped, as
    the native snapshotter does. Owners and device nodes need root; without it, an
    owner change to the caller's own ids still works.

    Raises:
        NotADirectoryError: ``src`` or an existing ``dst`` is not a directory.
        OSError: reading or writing failed; ``dst`` is left partly copied.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    root_st = os.lstat(src)
    if not stat.S_ISDIR(root_st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"source {src} is not a directory")
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        os.mkdir(dst, 0o700)
    else:
        if not stat.S_ISDIR(dst_st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"cannot copy to non-directory: {dst}")

    links: dict[tuple[int, int], str] = {}
    # Directories get their metadata after everything under them is written, deepest
    # first: creating children would otherwise change their times, and a read-only
    # mode would stop the copy.
    directories: list[tuple[os.stat_result, str, str]] = [(root_st, src, dst)]
    pending = [(src, dst)]
    while pending:
        sdir, ddir = pending.pop()
        with os.scandir(sdir) as it:
            entries = list(it)
        for entry in entries:
            source = entry.path
            target = os.path.join(ddir, entry.name)
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(target, 0o700)
                directories.append((st, source, target))
                pending.append((source, target))
                continue
            if stat.S_ISREG(mode):
                if st.st_nlink > 1:
                    first = links.get((st.st_dev, st.st_ino))
                    if first is not None:
                        os.link(first, target)
                        continue
                    links[(st.st_dev, st.st_ino)] = target
                _copy_file(source, target)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.mknod(target, mode, st.st_rdev)
            elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                os.mknod(target, mode)
            else:
                logger.warning("copy: unsupported file type %o: %s", stat.S_IFMT(mode), source)
                continue
            _copy_metadata(st, source, target)
    for st, source, target in reversed(directories):
        _copy_metadata(st, source, target)


def _copy_file(source: str, target: str) -> None:
    with open(source, "rb") as fsrc, open(target, "xb") as fdst:
        remaining = os.fstat(fsrc.fileno()).st_size
        first = True
        while remaining > 0:
            try:
                n = os.copy_file_range(fsrc.fileno(), fdst.fileno(), remaining)
            except OSError as exc:
                # Across file systems on old kernels, or where unsupported: copy in
                # user space, but only if nothing was copied the fast way yet.
                if first and exc.errno in (
                    errno.EXDEV,
                    errno.ENOSYS,
                    errno.EINVAL,
                    errno.EOPNOTSUPP,
                ):
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
                    return
                raise
            if n == 0:
                break
            first = False
            remaining -= n


def _copy_metadata(st: os.stat_result, source: str, target: str) -> None:
    try:
        os.lchown(target, st.st_uid, st.st_gid)
    except PermissionError:
        # Some file systems refuse even a no-op chown; only a real change matters.
        now = os.lstat(target)
        if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
            raise
    is_link = stat.S_ISLNK(st.st_mode)
    if not is_link:
        # After chown, which clears set-id bits.
        os.chmod(target, stat.S_IMODE(st.st_mode))
    _copy_xattrs(source, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(source: str, target: str) -> None:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        logger.debug("copy: cannot list xattrs of %s: %s", source, exc)
        return
    for name in names:
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            logger.debug("copy: skipping xattr %s of %s: %s", name, source, exc)


def running_in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one."""
    try:
        text = Path("/proc/self/uid_map").read_text()
    except OSError:
        return False
    return uid_map_is_nested(text)


def uid_map_is_nested(uid_map: str) -> bool:
    """Whether a ``/proc/<pid>/uid_map`` text describes a nested user namespace.

    The initial namespace maps the whole range onto itself: ``0 0 4294967295``.
    """
    lines = [line.split() for line in uid_map.splitlines() if line.strip()]
    return lines != [["0", "0", "4294967295"]]


def kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel; (0, 0) when it cannot be parsed."""
    release = os.uname().release
    parts = release.split(".")
    try:
        major = int(parts[0])
        minor = int("".join(ch for ch in parts[1] if ch.isdigit()) or "0")
    except (IndexError, ValueError):
        return 0, 0
    return major, minor


class _Statfs(ctypes.Structure):
    # Only f_type is read; the padding covers the rest of struct statfs.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def filesystem_type(path: str | os.PathLike[str]) -> int:
    """The ``statfs`` magic number of the file system holding ``path``.

    Raises:
        OSError: statfs failed.
    """
    libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded: no ldconfig run
    buf = _Statfs()
    if libc.statfs(os.fsencode(os.fspath(path)), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)}: statfs {path}")
    return int(buf.f_type) & 0xFFFFFFFF
