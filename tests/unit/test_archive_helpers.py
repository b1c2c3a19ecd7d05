"""Helpers shared by the archive tests (build layers in memory, describe trees)."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
from pathlib import Path

import zstandard

from pycontainerd.sansio import tar
from pycontainerd.sansio.tar import TarHeader

Entry = TarHeader | tuple[TarHeader, bytes]


def f(name: str, data: bytes = b"", **kw: object) -> tuple[TarHeader, bytes]:
    """A regular file entry."""
    return TarHeader(name=name, size=len(data), **kw), data  # type: ignore[arg-type]


def d(name: str, **kw: object) -> TarHeader:
    kw.setdefault("mode", 0o755)
    return TarHeader(name=name, typeflag=tar.DIRTYPE, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str, **kw: object) -> TarHeader:
    return TarHeader(name=name, typeflag=tar.SYMTYPE, linkname=target, **kw)  # type: ignore[arg-type]


def hard(name: str, target: str, **kw: object) -> TarHeader:
    return TarHeader(name=name, typeflag=tar.LNKTYPE, linkname=target, **kw)  # type: ignore[arg-type]


def layer(*entries: Entry) -> bytes:
    out = []
    for entry in entries:
        header, data = entry if isinstance(entry, tuple) else (entry, b"")
        out.append(tar.encode_entry(header, data))
    return b"".join(out) + tar.END_OF_ARCHIVE


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


def zst(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(raw)


def sha256(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def tree(root: Path, *, mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything under ``root`` (not root itself): type, mode, owner, contents, times."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    content = hashlib.sha256(fh.read()).hexdigest()[:16]
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                keys = sorted(os.listxattr(full, follow_symlinks=False))
                xattrs = tuple(
                    (k, os.getxattr(full, k, follow_symlinks=False))
                    for k in keys
                    if not k.startswith("security.selinux")
                )
            except OSError:
                xattrs = ()
            out[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                content,
                xattrs,
                st.st_mtime_ns // 10**9 if mtimes else None,
            )
    return out


def test_layer_helpers_round_trip() -> None:
    raw = layer(d("a/"), f("a/b", b"x"), sym("l", "a"), hard("h", "a/b"))
    names = [h.name for h, _ in tar.read_all(raw)]
    assert names == ["a/", "a/b", "l", "h"]
    assert gzip.decompress(gz(raw)) == raw
    assert zstandard.ZstdDecompressor().decompress(zst(raw)) == raw
