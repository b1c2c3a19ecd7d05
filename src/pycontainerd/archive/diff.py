"""Compute a layer from two trees (or an overlay upper dir) and write it as a tarball.

Two ways to find the changes, both yielding ``(kind, path, stat)`` in the order of a
sorted pre-order walk (a directory, then its entries by byte order):

``double-walk``
    continuity's ``fs.Changes`` double walk: ``lower`` and ``upper`` are full trees,
    compared path by path. A path only in ``lower`` is deleted (and none of its
    children is reported), a path only in ``upper`` is added, a path in both is
    modified unless it is the same file: same mode, owner, device, file capabilities
    and, for non-directories, size and mtime; when both mtimes have no sub-second
    part (a filesystem or an archive that drops them) the contents or link targets
    are compared too.

``overlay``
    ``upper`` is an overlayfs upper dir: every entry in it is a change, a 0/0
    character device is a deletion, and a directory with ``trusted.overlay.opaque=y``
    is emitted followed by an opaque marker. Directories identical to ``lower``'s
    (copied up only to hold a change) are left out unless a change below needs them.

The tar is written like containerd's ``ChangeWriter``: PAX entries, no user or group
names, times truncated to seconds, ``security.capability`` as the only xattr, every
parent directory of an entry present before it, hard-linked files written once and
then linked, sockets skipped. Whiteouts carry a fixed time, so equal changes give
byte-equal layers and digests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from pycontainerd.archive.compression import Compression, compressor
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument
from pycontainerd.sansio import tar

_CHUNK = 1 << 20
_CAPABILITY = "security.capability"
_OPAQUE_XATTRS = (tar.OVERLAY_OPAQUE_XATTR, "user.overlay.opaque")

DiffMode = Literal["overlay", "double-walk"]
DiffCompression = Literal["gzip", "none"]


class DiffResult(NamedTuple):
    """``digest`` of the blob written, ``diff_id`` of its uncompressed tar, blob ``size``."""

    digest: str
    diff_id: str
    size: int


class ChangeKind(Enum):
    UNMODIFIED = "unmodified"
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"
    OPAQUE = "opaque"  # overlay only: the directory hides its lower entries


Change = tuple[ChangeKind, str, os.stat_result | None]


# ---------------------------------------------------------------------------
# Walking
# ---------------------------------------------------------------------------


def _entries(full: str, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    with os.scandir(full) as it:
        entries = sorted(it, key=lambda e: os.fsencode(e.name))
    return iter([(f"{rel}/{e.name}" if rel else e.name, e) for e in entries])


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """``(relative path, lstat)`` of everything under ``root``, sorted pre-order.

    Names are sorted as bytes, which puts a directory's entries right after it and
    before any sibling that shares its prefix: the order continuity compares paths
    in (``/`` sorting before every other byte). Iterative, so depth is unbounded.
    """
    stack = [_entries(root, "")]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        rel, entry = item
        st = entry.stat(follow_symlinks=False)
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.append(_entries(entry.path, rel))


def _key(rel: str) -> bytes:
    # continuity's directoryCompare: "/" compares lower than any other byte.
    return os.fsencode(rel).replace(b"/", b"\0")


def _getxattr(path: str, key: str) -> bytes | None:
    try:
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _same_content(p1: str, p2: str) -> bool:
    with open(p1, "rb") as f1, open(p2, "rb") as f2:
        while True:
            b1, b2 = f1.read(_CHUNK), f2.read(_CHUNK)
            if b1 != b2:
                return False
            if not b1:
                return True


def _same_file(p1: str, s1: os.stat_result, p2: str, s2: os.stat_result) -> bool:
    """continuity's sameFile: metadata first, contents only when times are coarse."""
    if (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino):
        return True
    if (s1.st_mode, s1.st_uid, s1.st_gid, s1.st_rdev) != (
        s2.st_mode,
        s2.st_uid,
        s2.st_gid,
        s2.st_rdev,
    ):
        return False
    if _getxattr(p1, _CAPABILITY) != _getxattr(p2, _CAPABILITY):
        return False
    if stat.S_ISDIR(s1.st_mode):
        return True
    if s1.st_size != s2.st_size:
        return False
    sec1, nsec1 = divmod(s1.st_mtime_ns, 1_000_000_000)
    sec2, nsec2 = divmod(s2.st_mtime_ns, 1_000_000_000)
    if sec1 != sec2:
        return False
    if nsec1 == 0 and nsec2 == 0:
        if stat.S_ISLNK(s1.st_mode):
            return os.readlink(p1) == os.readlink(p2)
        if s1.st_size == 0 or not stat.S_ISREG(s1.st_mode):
            return True
        return _same_content(p1, p2)
    return nsec1 == nsec2


def _is_linked(st: os.stat_result) -> bool:
    return not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1


def double_walk_changes(lower: Path | None, upper: Path) -> Iterator[Change]:
    """continuity's ``fs.Changes`` (double walk) from ``lower`` to ``upper``.

    ``UNMODIFIED`` is reported only for hard-linked files, which the writer needs to
    link to a changed copy of the same inode.
    """
    up = str(upper)
    b = _walk(up)
    if lower is None:
        for rel, st in b:
            yield ChangeKind.ADD, rel, st
        return
    low = str(lower)
    a = _walk(low)
    f1 = next(a, None)
    f2 = next(b, None)
    rmdir: str | None = None  # children of a deleted directory are not reported
    while f1 is not None or f2 is not None:
        if f2 is None or (f1 is not None and _key(f1[0]) < _key(f2[0])):
            assert f1 is not None
            path, st1 = f1
            f1 = next(a, None)
            if rmdir is not None and path.startswith(rmdir):
                continue
            rmdir = path + "/" if stat.S_ISDIR(st1.st_mode) else None
            yield ChangeKind.DELETE, path, None
            continue
        if f1 is None or _key(f1[0]) > _key(f2[0]):
            rmdir = None
            path, st2 = f2
            f2 = next(b, None)
            yield ChangeKind.ADD, path, st2
            continue
        path, st1 = f1
        _, st2 = f2
        f1, f2 = next(a, None), next(b, None)
        same = _same_file(os.path.join(low, path), st1, os.path.join(up, path), st2)
        replaced_dir = stat.S_ISDIR(st1.st_mode) and not stat.S_ISDIR(st2.st_mode)
        rmdir = path + "/" if replaced_dir else None
        if same:
            if _is_linked(st2):
                yield ChangeKind.UNMODIFIED, path, st2
            continue
        yield ChangeKind.MODIFY, path, st2


def overlay_changes(lower: Path | None, upper: Path) -> Iterator[Change]:
    """The changes an overlayfs upper dir records, read without mounting it."""
    up = str(upper)
    for rel, st in _walk(up):
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            yield ChangeKind.DELETE, rel, None
            continue
        if stat.S_ISDIR(st.st_mode):
            full = os.path.join(up, rel)
            if any(_getxattr(full, key) == b"y" for key in _OPAQUE_XATTRS):
                yield ChangeKind.MODIFY, rel, st
                yield ChangeKind.OPAQUE, rel, st
                continue
            if lower is not None and _same_dir(os.path.join(lower, rel), st):
                continue  # copied up to hold a change below; added back if needed
        yield ChangeKind.MODIFY, rel, st


def _same_dir(lower_path: str, st: os.stat_result) -> bool:
    try:
        low = os.lstat(lower_path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (
        stat.S_ISDIR(low.st_mode)
        and (low.st_mode, low.st_uid, low.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
        and low.st_mtime_ns // 1_000_000_000 == st.st_mtime_ns // 1_000_000_000
    )


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


class _Sink:
    """Hashes the tar, compresses it, hashes and counts what reaches ``out``."""

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self._out = out
        self._compressor = compressor(compression)
        self._tar_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self._buf = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        # Headers are small: gather them so the compressor sees large pieces.
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._tar_hash.update(data)
            self._emit(self._compressor.compress(data))

    def _emit(self, blob: bytes) -> None:
        if blob:
            self._out.write(blob)
            self._blob_hash.update(blob)
            self.size += len(blob)

    def close(self) -> DiffResult:
        self._flush()
        self._emit(self._compressor.flush())
        return DiffResult(
            digest=f"sha256:{self._blob_hash.hexdigest()}",
            diff_id=f"sha256:{self._tar_hash.hexdigest()}",
            size=self.size,
        )


class _ChangeWriter:
    """containerd's ChangeWriter: changes in, OCI layer tar out."""

    def __init__(self, source: str, sink: _Sink) -> None:
        self._source = source
        self._sink = sink
        self._added_dirs: set[str] = set()
        self._inode_src: dict[tuple[int, int], str] = {}
        self._inode_refs: dict[tuple[int, int], list[str]] = {}

    def handle(self, kind: ChangeKind, rel: str, st: os.stat_result | None) -> None:
        if kind is ChangeKind.DELETE:
            header = tar.whiteout_header(rel)
            self._include_parents(header)
            self._sink.write(tar.encode_header(header))
            return
        if kind is ChangeKind.OPAQUE:
            header = tar.opaque_header(rel)
            self._include_parents(header)
            self._sink.write(tar.encode_header(header))
            return
        assert st is not None
        if stat.S_ISSOCK(st.st_mode):
            return
        full = os.path.join(self._source, rel)
        link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
        made = tar.header_for(
            rel,
            st_mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            linkname=link,
            devmajor=os.major(st.st_rdev),
            devminor=os.minor(st.st_rdev),
        )
        if made is None:
            return
        header = made
        extra_links: list[str] = []
        if _is_linked(st):
            inode = (st.st_dev, st.st_ino)
            source = self._inode_src.get(inode)
            if source is not None:
                header = replace(header, typeflag=tar.LNKTYPE, linkname=source, size=0)
            elif kind is ChangeKind.UNMODIFIED:
                self._inode_refs.setdefault(inode, []).append(header.name)
                return
            else:
                self._inode_src[inode] = header.name
                extra_links = self._inode_refs.pop(inode, [])
        elif kind is ChangeKind.UNMODIFIED:
            return
        capability = _getxattr(full, _CAPABILITY)
        if capability:
            header = replace(header, pax=((tar.PAX_XATTR_PREFIX + _CAPABILITY, capability),))
        self._include_parents(header)
        self._sink.write(tar.encode_header(header))
        if header.typeflag == tar.REGTYPE and header.size:
            self._copy(full, header)
        for name in extra_links:
            link_header = replace(header, name=name, typeflag=tar.LNKTYPE, linkname=header.name)
            link_header = replace(link_header, size=0)
            self._include_parents(link_header)
            self._sink.write(tar.encode_header(link_header))

    def _copy(self, full: str, header: tar.TarHeader) -> None:
        remaining = header.size
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while remaining:
                data = os.read(fd, min(remaining, _CHUNK))
                if not data:
                    break
                remaining -= len(data)
                self._sink.write(data)
            if remaining or os.read(fd, 1):
                raise FailedPrecondition(
                    f"{header.name!r} changed size while the diff was being written"
                )
        finally:
            os.close(fd)
        self._sink.write(tar.padding(header.size))

    def _include_parents(self, header: tar.TarHeader) -> None:
        name = header.name.rstrip("/")
        parent = os.path.dirname(name)
        if name and parent and parent not in self._added_dirs:
            self._added_dirs.add(parent)
            st = os.stat(os.path.join(self._source, parent))
            self.handle(ChangeKind.MODIFY, parent, st)
        if header.typeflag == tar.DIRTYPE:
            self._added_dirs.add(name)


def write_diff(
    lower: Path | None,
    upper: Path,
    out: BinaryIO,
    *,
    mode: DiffMode,
    compression: DiffCompression = "gzip",
) -> DiffResult:
    """Write the layer that turns ``lower`` into ``upper`` to ``out``. Blocking.

    Call it in a worker thread. ``upper`` (and ``lower``) must not change meanwhile:
    containerd mounts them read-only for this.

    Args:
        lower: the tree below (None: no lower, every entry is added). In "overlay"
            mode it only serves to leave out directories copied up unchanged.
        upper: the new full tree ("double-walk") or the overlay upper dir ("overlay").
        out: where the blob goes; written sequentially, not closed.
        mode: how to find the changes (see the module docstring).
        compression: "gzip" (deterministic: no name, zero mtime) or "none".

    Returns:
        The blob digest, the diff id (digest of the tar) and the blob size.

    Raises:
        InvalidArgument: unknown mode or compression.
        FailedPrecondition: a file changed size while it was being archived.
        OSError: reading the trees or writing ``out`` failed. ``out`` then holds a
            partial blob, which the caller discards.
    """
    if mode == "double-walk":
        changes = double_walk_changes(lower, upper)
    elif mode == "overlay":
        changes = overlay_changes(lower, upper)
    else:
        raise InvalidArgument(f"unknown diff mode {mode!r}")
    if compression not in ("gzip", "none"):
        raise InvalidArgument(f"unsupported diff compression {compression!r}")
    sink = _Sink(out, Compression(compression))
    writer = _ChangeWriter(str(upper), sink)
    for kind, rel, st in changes:
        writer.handle(kind, rel, st)
    sink.write(tar.END_OF_ARCHIVE)
    return sink.close()
