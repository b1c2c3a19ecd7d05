"""Execute ``Mount`` lists: containerd's ``mount.All`` / ``UnmountAll`` for Linux.

Options are fstab-style, split as containerd's ``parseMountOptions`` does: words in
its flag table become ``mount(2)`` flags, everything else is passed to the file system
as data. A read-only bind is a bind followed by a read-only remount, since the kernel
ignores ``MS_RDONLY`` on the first call.

``mount(2)`` copies at most one page of data. Deep overlay stacks exceed that with
absolute ``lowerdir`` paths, so, like containerd, long overlay options are compacted
to paths relative to the layers' common directory and the mount is made from there.
The working directory is per-process, so that mount runs on a throw-away thread that
first unshares its file-system context (``unshare(CLONE_FS)``), leaving the daemon's
own working directory untouched.

Every call here blocks; the daemon runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycontainerd.errdefs import InvalidArgument, NotImplemented_
from pycontainerd.snapshots.interface import Mount

__all__ = [
    "MNT_DETACH",
    "Mount",
    "ParsedOptions",
    "compact_lowerdir",
    "mount",
    "mount_all",
    "mounted",
    "parse_mount_options",
    "unmount",
    "unmount_all",
]

logger = logging.getLogger(__name__)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2
_CLONE_FS = 0x200

_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# (clear, flag): containerd's table, plus the propagation words later versions accept.
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
    "shared": (False, MS_SHARED),
    "rshared": (False, MS_SHARED | MS_REC),
    "private": (False, MS_PRIVATE),
    "rprivate": (False, MS_PRIVATE | MS_REC),
    "slave": (False, MS_SLAVE),
    "rslave": (False, MS_SLAVE | MS_REC),
    "unbindable": (False, MS_UNBINDABLE),
    "runbindable": (False, MS_UNBINDABLE | MS_REC),
}

_FUSE_HELPERS = ("mount.fuse", "mount.fuse3")


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


class _Libc:
    """The three libc calls Python's os module lacks, loaded on first use."""

    _lib: ctypes.CDLL | None = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        if cls._lib is None:
            lib = ctypes.CDLL(None, use_errno=True)  # libc, already loaded: no ldconfig run
            lib.mount.argtypes = [
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_ulong,
                ctypes.c_char_p,
            ]
            lib.mount.restype = ctypes.c_int
            lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
            lib.umount2.restype = ctypes.c_int
            lib.unshare.argtypes = [ctypes.c_int]
            lib.unshare.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _Libc.get().mount(
        os.fsencode(source) if source else None,
        os.fsencode(target),
        os.fsencode(fstype) if fstype else None,
        flags,
        os.fsencode(data) if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(
            err,
            f"{os.strerror(err)}: mount -t {fstype or '(none)'} {source or '(none)'} {target}"
            f" (flags {flags:#x}, data {data!r})",
        )


def _sys_umount(target: str, flags: int) -> int:
    """``umount2``; returns 0 or the errno."""
    if _Libc.get().umount2(os.fsencode(target), flags) != 0:
        return ctypes.get_errno()
    return 0


@dataclass(frozen=True, slots=True)
class ParsedOptions:
    """Mount options split for ``mount(2)``: flags, file-system data, loop device."""

    flags: int
    data: str
    loop: bool = False


def parse_mount_options(options: Iterable[str]) -> ParsedOptions:
    """Split fstab-style options into flags and data, as containerd does.

    A later word wins over an earlier one (``ro,rw`` is read-write); words outside the
    flag table, such as ``lowerdir=...`` or ``index=off``, are data, in order.
    """
    flags = 0
    data: list[str] = []
    loop = False
    for opt in options:
        entry = _FLAGS.get(opt)
        if entry is not None and entry[1] != 0:
            clear, flag = entry
            flags = flags & ~flag if clear else flags | flag
        elif opt == "loop":
            loop = True
        elif entry is None:
            data.append(opt)
    return ParsedOptions(flags, ",".join(data), loop)


def compact_lowerdir(options: Sequence[str]) -> tuple[str, list[str]]:
    """Rewrite ``lowerdir=`` relative to the directory its layers have in common.

    Returns:
        ``(directory, options)``: mount from ``directory`` with the new options, or
        ``("", options)`` unchanged when there is nothing to gain (one layer, no
        ``lowerdir``, or only ``/`` in common).
    """
    opts = list(options)
    index = next((i for i, o in enumerate(opts) if o.startswith("lowerdir=")), -1)
    if index < 0:
        return "", opts
    dirs = opts[index].removeprefix("lowerdir=").split(":")
    if len(dirs) < 2 or not all(d.startswith("/") for d in dirs):
        return "", opts
    common = os.path.commonpath(dirs)
    if common in dirs:
        # A layer that is the common directory itself would become "", which the
        # kernel rejects; step up so every relative path is non-empty.
        common = os.path.dirname(common)
    if common == "/":
        return "", opts
    prefix = common.rstrip("/") + "/"
    relative = [d[len(prefix) :] for d in dirs]
    del opts[index]
    opts.append("lowerdir=" + ":".join(relative))
    return common, opts


def _mount_from(
    directory: str, source: str, target: str, fstype: str, flags: int, data: str
) -> None:
    """``mount(2)`` with relative paths in ``data`` resolved against ``directory``."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            # This thread gets its own cwd; the process's stays where it was.
            if _Libc.get().unshare(_CLONE_FS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"{os.strerror(err)}: unshare(CLONE_FS)")
            os.chdir(directory)
            _sys_mount(source, target, fstype, flags, data)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, name="pycontainerd-mountat", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


def _mount_with_helper(helper: str, type_prefix: str, m: Mount, target: str) -> None:
    args = [helper, m.source, target]
    for opt in m.options:
        args += ["-o", opt]
    args += ["-t", m.type.removeprefix(type_prefix)]
    proc = subprocess.run(args, capture_output=True, check=False)
    if proc.returncode != 0:
        raise OSError(
            errno.EIO,
            f"mount helper {args} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}",
        )


def _where(m: Mount, target: str | os.PathLike[str]) -> str:
    # Absolute, because a compacted overlay is mounted from another directory.
    where = os.path.abspath(target)
    return os.path.join(where, m.target.lstrip("/")) if m.target else where


def mount(m: Mount, target: str | os.PathLike[str]) -> None:
    """Mount ``m`` on ``target`` (or on ``target/m.target`` when that is set).

    ``fuse.*`` and ``fuse3.*`` types go through the ``mount.fuse``/``mount.fuse3``
    helpers, as in containerd.

    Raises:
        OSError: the mount failed (errno from the kernel; the message shows the call).
        InvalidArgument: the options do not fit in one page even after compaction.
        NotImplemented_: the ``loop`` option (no loop-device setup here yet).
    """
    where = _where(m, target)
    for helper in _FUSE_HELPERS:
        prefix = helper.removeprefix("mount.") + "."
        if m.type.startswith(prefix):
            _mount_with_helper(helper, prefix, m, where)
            return
    directory, options = "", list(m.options)
    # 512 bytes of headroom below the page, as containerd leaves.
    if m.type == "overlay" and sum(len(o) for o in options) >= _page_size() - 512:
        directory, options = compact_lowerdir(options)
    parsed = parse_mount_options(options)
    if len(parsed.data) > _page_size():
        raise InvalidArgument("mount options is too long")
    if parsed.loop:
        raise NotImplemented_("mount option loop")
    flags = parsed.flags & ~_PROPAGATION
    if not flags & MS_REMOUNT or parsed.data:
        if directory:
            _mount_from(directory, m.source, where, m.type, flags, parsed.data)
        else:
            _sys_mount(m.source, where, m.type, flags, parsed.data)
    if parsed.flags & _PROPAGATION:
        _sys_mount("", where, "", parsed.flags & (_PROPAGATION | MS_REC | MS_SILENT), "")
    if flags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:
        _sys_mount("", where, "", flags | MS_REMOUNT, "")


def mount_all(mounts: Iterable[Mount], target: str | os.PathLike[str]) -> None:
    """Mount each of ``mounts`` on ``target`` in order.

    If one fails, those already made are unmounted (detached if busy) before the
    error propagates, so a failed call leaves ``target`` as it was.

    Raises:
        What ``mount`` raises.
    """
    done: list[str] = []
    try:
        for m in mounts:
            mount(m, target)
            done.append(_where(m, target))
    except BaseException:
        for where in reversed(done):
            try:
                unmount(where)
            except OSError:
                logger.warning("failed to undo mount on %s", where, exc_info=True)
        raise


def unmount(target: str | os.PathLike[str], flags: int = 0) -> None:
    """Unmount the top mount on ``target``; detach it lazily if it is busy.

    ``target`` not being a mount point is not an error (containerd's ``Unmount``).

    Raises:
        OSError: another failure (EPERM, ENOENT ...).
    """
    path = os.fspath(target)
    err = _sys_umount(path, flags)
    if err == errno.EBUSY and not flags & MNT_DETACH:
        # Something still has a file open there; detach so the mount goes away as soon
        # as it is released, rather than polling until it is.
        err = _sys_umount(path, flags | MNT_DETACH)
    if err not in (0, errno.EINVAL):
        raise OSError(err, f"{os.strerror(err)}: unmount {path}")


def unmount_all(target: str | os.PathLike[str], flags: int = 0) -> None:
    """Unmount every mount stacked on ``target`` (detaching busy ones).

    A missing ``target`` or an empty string is a no-op, as in containerd.

    Raises:
        OSError: an unmount failed for a reason other than ``target`` not (or no
        longer) being a mount point.
    """
    path = os.fspath(target)
    if not path or not os.path.lexists(path):
        return
    # A stack is finite; the bound only guards against a kernel that keeps answering 0.
    for _ in range(4096):
        err = _sys_umount(path, flags)
        if err == errno.EBUSY and not flags & MNT_DETACH:
            err = _sys_umount(path, flags | MNT_DETACH)
        if err == errno.EINVAL:
            return
        if err != 0:
            raise OSError(err, f"{os.strerror(err)}: unmount {path}")
    raise OSError(errno.EBUSY, f"too many mounts stacked on {path}")


@contextlib.contextmanager
def mounted(mounts: Iterable[Mount], target: str | os.PathLike[str]) -> Iterator[Path]:
    """Mount ``mounts`` on ``target`` for the ``with`` block, then unmount everything
    stacked there (detaching if busy), also when the block raises.

    Raises:
        What ``mount_all`` and ``unmount_all`` raise.
    """
    mount_all(mounts, target)
    try:
        yield Path(target)
    finally:
        unmount_all(target)
