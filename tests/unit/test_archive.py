"""pycontainerd.archive: applying layers to directories and writing diffs.

Most of this runs without privileges; tests that need root (overlay whiteouts, device
nodes, other owners, trusted/security xattrs) skip otherwise.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from pycontainerd import archive, errdefs
from pycontainerd.archive import compression
from pycontainerd.archive.apply import DiffIdMismatch
from pycontainerd.images import mediatypes
from pycontainerd.sansio import tar
from pycontainerd.sansio.tar import LayerError, TarHeader, TruncatedLayer
from tests.unit.test_archive_helpers import d, f, gz, hard, layer, sha256, sym, tree, zst

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")


def apply(root: Path, blob: bytes, mode: archive.WhiteoutMode = "delete", **kw: object):  # type: ignore[no-untyped-def]
    return archive.apply_layer(root, io.BytesIO(blob), whiteout_mode=mode, **kw)  # type: ignore[arg-type]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


# ---------------------------------------------------------------------------
# Basic apply
# ---------------------------------------------------------------------------


def test_apply_creates_entries_with_metadata(root: Path) -> None:
    raw = layer(
        d("./"),
        d("etc/", mode=0o750, mtime_ns=1_000 * 10**9),
        f("etc/conf", b"k=v\n", mode=0o640, mtime_ns=2_000 * 10**9, atime_ns=2_500 * 10**9),
        f("deep/er/file", b"x"),  # parents made implicitly, 0755
        sym("etc/link", "conf", mtime_ns=3_000 * 10**9),
        # A hardlink's header sets the shared inode's metadata (containerd does this).
        hard("etc/hard", "etc/conf", mode=0o640, mtime_ns=2_000 * 10**9, atime_ns=2_500 * 10**9),
        TarHeader(name="fifo", typeflag=tar.FIFOTYPE, mode=0o600),
        f("empty"),
    )
    result = apply(root, raw)
    assert result.diff_id == sha256(raw)
    assert result.size == len(raw)
    st = (root / "etc/conf").stat()  # before reading it, which may move atime
    assert (root / "etc/conf").read_bytes() == b"k=v\n"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 2_000 * 10**9 and st.st_atime_ns == 2_500 * 10**9
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o750
    assert (root / "etc").stat().st_mtime_ns == 1_000 * 10**9  # set after its children
    assert stat.S_IMODE((root / "deep/er").stat().st_mode) == 0o755
    assert os.readlink(root / "etc/link") == "conf"
    assert (root / "etc/link").lstat().st_mtime_ns == 3_000 * 10**9
    assert (root / "etc/hard").stat().st_ino == st.st_ino
    assert stat.S_ISFIFO((root / "fifo").lstat().st_mode)
    assert (root / "empty").read_bytes() == b""


def test_apply_large_file_across_chunks(root: Path) -> None:
    data = os.urandom(3 << 20) + bytes(100)
    raw = layer(f("big", data), f("after", b"ok"))
    apply(root, gz(raw))
    assert (root / "big").read_bytes() == data
    assert (root / "after").read_bytes() == b"ok"


@pytest.mark.parametrize(
    ("media_type", "wrap"),
    [
        (None, lambda r: r),
        (None, gz),
        (None, zst),
        (mediatypes.OCI_LAYER, lambda r: r),
        (mediatypes.OCI_LAYER_GZIP, gz),
        (mediatypes.OCI_LAYER_ZSTD, zst),
        (mediatypes.DOCKER_LAYER, gz),  # docker "tar" that is really gzip: detected
        (mediatypes.DOCKER_LAYER_GZIP, gz),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", gz),
        (mediatypes.OCI_LAYER_GZIP, lambda r: r),  # mislabelled: detected as tar
    ],
)
def test_media_types_and_compression(root: Path, media_type: str | None, wrap) -> None:  # type: ignore[no-untyped-def]
    raw = layer(f("a", b"hello"))
    result = apply(root, wrap(raw), media_type=media_type)
    assert result.diff_id == sha256(raw)
    assert (root / "a").read_bytes() == b"hello"


def test_zlib_fallback(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "HAVE_ISAL", False)
    raw = layer(f("a", b"hello"))
    assert apply(root, gz(raw)).diff_id == sha256(raw)
    with pytest.raises(TruncatedLayer):
        apply(root, gz(layer(f("b", os.urandom(5000))))[:-10])


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        "application/vnd.oci.image.config.v1+json",
        "text/plain",
    ],
)
def test_unknown_media_type(root: Path, media_type: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="unsupported layer media type") as info:
        apply(root, layer(), media_type=media_type)
    assert media_type in str(info.value)


def test_expected_diff_id(root: Path) -> None:
    raw = layer(f("a", b"1"))
    assert apply(root, gz(raw), expected_diff_id=sha256(raw)).diff_id == sha256(raw)
    wrong = sha256(b"other")
    with pytest.raises(DiffIdMismatch) as info:
        apply(root, gz(raw), expected_diff_id=wrong)
    assert isinstance(info.value, errdefs.FailedPrecondition)
    assert info.value.expected == wrong and info.value.actual == sha256(raw)
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, raw, expected_diff_id="sha256:nothex")
    with pytest.raises(errdefs.InvalidArgument, match="whiteout mode"):
        apply(root, raw, mode="aufs")  # type: ignore[arg-type]


def test_digest_covers_bytes_after_end_of_archive(root: Path) -> None:
    raw = layer(f("a", b"1")) + bytes(10240)  # tar writers pad to a record size
    result = apply(root, gz(raw))
    assert result.diff_id == sha256(raw) and result.size == len(raw)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(errdefs.NotFound):
        apply(tmp_path / "nope", layer())


# ---------------------------------------------------------------------------
# Compression edge cases
# ---------------------------------------------------------------------------


def test_zstd_frames_and_truncation(root: Path) -> None:
    raw = layer(f("a", os.urandom(200_000)), f("b", b"x"))
    skippable = struct.pack("<II", 0x184D2A50, 3) + b"abc"
    blob = skippable + zst(raw[:100_000]) + zst(raw[100_000:])
    assert apply(root, blob).diff_id == sha256(raw)
    with pytest.raises(TruncatedLayer, match="zstd") as info:
        apply(root, zst(raw)[:-20], media_type=mediatypes.OCI_LAYER_ZSTD)
    assert "'a'" in str(info.value) or "'b'" in str(info.value)


def test_gzip_truncated_and_corrupt(root: Path) -> None:
    raw = layer(f("victim", os.urandom(300_000)))
    blob = gz(raw)
    with pytest.raises(TruncatedLayer) as info:
        apply(root, blob[: len(blob) // 2])
    assert "'victim'" in str(info.value)
    corrupt = blob[:30] + bytes(1000) + blob[1030:]
    with pytest.raises(LayerError):
        apply(root, corrupt)


def test_concatenated_gzip_members(root: Path) -> None:
    raw = layer(f("a", b"1" * 5000), f("b", b"2"))
    assert apply(root, gz(raw[:2048]) + gz(raw[2048:])).diff_id == sha256(raw)


@pytest.mark.parametrize("wrap", [gz, zst])
def test_decompression_is_bounded(wrap) -> None:  # type: ignore[no-untyped-def]
    bomb = wrap(bytes(256 << 20))
    assert len(bomb) < 1 << 20
    reader = compression.open_layer(io.BytesIO(bomb), None)
    assert len(reader.read(1 << 20)) == 1 << 20


def test_detect_compression() -> None:
    assert compression.detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert compression.detect_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert compression.detect_compression(struct.pack("<II", 0x184D2A5F, 0)) == "zstd"
    assert compression.detect_compression(b"usr/") == "none"
    assert compression.compression_for(mediatypes.OCI_LAYER) == "none"
    assert compression.compression_for(None) is None


def test_no_thread_left_behind_on_error(root: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    raw = layer(f("ok", b"1"), TarHeader(name="bad", typeflag="V"), f("x", os.urandom(4 << 20)))
    with pytest.raises(LayerError, match="'bad'"):
        apply(root, gz(raw))
    leftover = [t for t in threading.enumerate() if t.ident not in before]
    assert not [t for t in leftover if t.name == "layer-decompress"]


# ---------------------------------------------------------------------------
# Whiteouts
# ---------------------------------------------------------------------------


def _lower(root: Path) -> None:
    apply(
        root,
        layer(
            f("a/x", b"x"),
            f("a/y", b"y"),
            f("b/c", b"c"),
            f("keep", b"k"),
            f("d/old1", b"1"),
            f("d/old2/sub", b"2"),
            f("d/kept/old", b"3"),
        ),
    )


def test_delete_mode_whiteouts(root: Path) -> None:
    _lower(root)
    apply(root, layer(f(".wh.b"), f("a/.wh.x"), f("nowhere/.wh.z")))
    assert not (root / "b").exists()
    assert not (root / "a/x").exists() and (root / "a/y").exists()
    assert not (root / "nowhere").exists()  # no parents made just to delete nothing
    assert (root / "keep").exists()


@pytest.mark.parametrize("marker_first", [True, False])
def test_delete_mode_opaque_keeps_this_layers_entries(root: Path, marker_first: bool) -> None:
    _lower(root)
    marker = f("d/.wh..wh..opq")
    own = [d("d/"), f("d/new", b"n"), d("d/kept/"), f("d/kept/newf", b"f")]
    raw = layer(marker, *own) if marker_first else layer(*own, marker)
    apply(root, raw)
    assert sorted(os.listdir(root / "d")) == ["kept", "new"]
    assert os.listdir(root / "d/kept") == ["newf"]
    assert (root / "a/x").exists()


def test_opaque_root(root: Path) -> None:
    _lower(root)
    apply(root, layer(f("fresh", b"1"), f(".wh..wh..opq")))
    assert os.listdir(root) == ["fresh"]


@needs_root
def test_overlay_mode_whiteouts(root: Path) -> None:
    raw = layer(f("a/.wh.x", uid=7, gid=8), f("d/.wh..wh..opq"), f("d/new", b"n"))
    apply(root, raw, mode="overlay")
    st = (root / "a/x").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert os.getxattr(root / "d", "trusted.overlay.opaque") == b"y"
    assert (root / "d/new").read_bytes() == b"n"


@needs_root
def test_overlay_mode_parents_copy_lower_attributes(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    apply(
        lower,
        layer(d("usr/", mode=0o700, uid=5, gid=6, mtime_ns=77 * 10**9), f("usr/lib/x")),
    )
    os.setxattr(lower / "usr", "user.tag", b"t")
    archive.apply_layer(
        upper,
        io.BytesIO(layer(f("usr/new", b"1"), f("other/f"))),
        whiteout_mode="overlay",
        parents=[lower],
    )
    st = (upper / "usr").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 5, 6)
    assert st.st_mtime_ns == 77 * 10**9
    assert os.getxattr(upper / "usr", "user.tag") == b"t"
    assert stat.S_IMODE((upper / "other").stat().st_mode) == 0o755


def test_trusted_xattrs_from_a_layer_are_ignored(root: Path) -> None:
    raw = layer(
        d("d/", pax=(("SCHILY.xattr.trusted.overlay.opaque", b"y"),)),
        f("f", b"1", pax=(("SCHILY.xattr.user.k", b"v"),)),
    )
    result = apply(root, raw)
    assert "trusted.overlay.opaque" not in os.listxattr(root / "d")
    assert os.getxattr(root / "f", "user.k") == b"v"
    assert any("trusted.overlay.opaque" in w for w in result.warnings)


# ---------------------------------------------------------------------------
# Replacing, merging, resolving
# ---------------------------------------------------------------------------


def test_replacements_and_merges(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "t").write_bytes(b"untouched")
    apply(
        root,
        layer(
            f("p", b"file"),
            f("q/inner", b"i"),
            sym("r", str(outside / "t")),
            f("s/old", b"o"),
        ),
    )
    apply(
        root,
        layer(
            d("p/"),
            f("p/f", b"pf"),
            f("q", b"now a file"),
            f("r", b"replaces the link"),
            d("s/", mode=0o711),
            f("s/new", b"n"),
        ),
    )
    assert (root / "p/f").read_bytes() == b"pf"
    assert (root / "q").read_bytes() == b"now a file"
    assert not (root / "r").is_symlink() and (root / "r").read_bytes() == b"replaces the link"
    assert (outside / "t").read_bytes() == b"untouched"
    assert sorted(os.listdir(root / "s")) == ["new", "old"]
    assert stat.S_IMODE((root / "s").stat().st_mode) == 0o711


def test_symlinked_parents_resolve_inside_root(root: Path, tmp_path: Path) -> None:
    apply(root, layer(d("usr/lib/"), sym("lib", "usr/lib"), sym("abs", "/usr/lib")))
    apply(root, layer(f("lib/x", b"1"), f("abs/y", b"2"), sym("up", "../../../.."), f("up/z")))
    assert (root / "usr/lib/x").read_bytes() == b"1"
    assert (root / "usr/lib/y").read_bytes() == b"2"
    assert (root / "z").exists()
    assert not (tmp_path / "z").exists()


def test_changing_directories_midway(root: Path) -> None:
    # A directory, replaced by a symlink within the same layer, then written through.
    raw = layer(
        f("a/one", b"1"),
        d("target/"),
        f("a", b"now a file"),
        f("b/x", b"x"),
        sym("b", "target"),
        f("b/y", b"y"),
    )
    apply(root, raw)
    assert (root / "a").read_bytes() == b"now a file"
    assert (root / "target/y").read_bytes() == b"y"
    assert not (root / "target/x").exists()


def test_missing_parent_that_later_becomes_a_symlink(root: Path) -> None:
    apply(root, layer(f("p/.wh.x"), sym("p", "real"), d("real/"), f("p/file", b"1")))
    assert (root / "real/file").read_bytes() == b"1"


def test_file_as_parent_is_an_error(root: Path) -> None:
    with pytest.raises(LayerError, match="'f/x'") as info:
        apply(root, layer(f("f", b"1"), f("f/x", b"2")))
    assert "not a directory" in str(info.value)


def test_symlink_loop_is_an_error(root: Path) -> None:
    with pytest.raises(LayerError, match="symbolic links"):
        apply(root, layer(sym("l1", "l2"), sym("l2", "l1"), f("l1/x")))


def test_bad_hardlinks(root: Path) -> None:
    with pytest.raises(LayerError, match="does not exist"):
        apply(root, layer(hard("h", "missing")))
    with pytest.raises(LayerError, match="'h2'"):
        apply(root, layer(d("dir/"), hard("h2", "dir")))
    with pytest.raises(LayerError, match="escapes"):
        apply(root, layer(hard("h3", "../../etc/passwd")))


def test_hardlink_to_symlink_links_the_symlink(root: Path) -> None:
    apply(root, layer(sym("s", "/etc/hostname"), hard("h", "s")))
    assert os.readlink(root / "h") == "/etc/hostname"
    assert (root / "h").lstat().st_ino == (root / "s").lstat().st_ino


def test_device_nodes_skipped_without_privilege(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    raw = layer(TarHeader(name="null", typeflag=tar.CHRTYPE, devmajor=1, devminor=3))
    result = apply(root, raw)
    assert not (root / "null").exists()
    assert any("'null'" in w for w in result.warnings)


@needs_root
def test_root_only_metadata(root: Path) -> None:
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    raw = layer(
        f("suid", b"x", mode=0o4755, uid=1000, gid=1000),
        d("shared/", mode=0o2775, gid=50),
        d("tmp/", mode=0o1777),
        f("ping", b"p", mode=0o755, pax=(("SCHILY.xattr.security.capability", cap),)),
        TarHeader(name="dev/null", typeflag=tar.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        sym("owned", "x", uid=3, gid=4),
    )
    apply(root, raw)
    st = (root / "suid").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1000, 1000)
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o2775
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert os.getxattr(root / "ping", "security.capability") == cap
    dev = (root / "dev/null").lstat()
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(dev.st_mode) == 0o666
    owned = (root / "owned").lstat()
    assert (owned.st_uid, owned.st_gid) == (3, 4)


# ---------------------------------------------------------------------------
# Diffs
# ---------------------------------------------------------------------------


def _cp(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)


def _entries(blob: bytes) -> list[tuple[str, str]]:
    raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    return [(h.name, h.typeflag) for h, _ in tar.read_all(raw)]


def _base(root: Path) -> None:
    apply(
        root,
        layer(
            d("etc/"),
            f("etc/a", b"a", mtime_ns=10**9),
            f("etc/b", b"b", mtime_ns=10**9),
            d("gone/"),
            f("gone/x", b"x"),
            f("gone/y/z", b"z"),
            f("same", b"s", mtime_ns=10**9),
            f("linked", b"l", mtime_ns=10**9),
            hard("linked2", "linked"),
            sym("link", "etc/a"),
            d("usr/bin/"),
            f("usr/bin/tool", b"t", mtime_ns=10**9),
        ),
    )


def test_double_walk_round_trip(tmp_path: Path) -> None:
    lower, upper, check = tmp_path / "lower", tmp_path / "upper", tmp_path / "check"
    for p in (lower, upper, check):
        p.mkdir()
    _base(lower)
    _cp(lower, upper)
    (upper / "etc/a").write_bytes(b"changed")
    (upper / "etc/new").write_bytes(b"new")
    os.unlink(upper / "etc/b")
    subprocess.run(["rm", "-rf", str(upper / "gone")], check=True)
    (upper / "usr/bin/more").write_bytes(b"m")
    os.link(upper / "etc/new", upper / "usr/bin/newlink")
    os.unlink(upper / "link")
    os.symlink("etc/new", upper / "link")
    (upper / "linked").write_bytes(b"L")  # both names of the inode change together

    out = io.BytesIO()
    result = archive.write_diff(lower, upper, out, mode="double-walk")
    blob = out.getvalue()
    assert result.digest == sha256(blob) and result.size == len(blob)
    assert result.diff_id == sha256(gzip.decompress(blob))
    entries = _entries(blob)
    names = [n for n, _ in entries]
    assert "same" not in names  # unchanged files are not written
    assert ".wh.gone" in names and not any(n.startswith("gone/") for n in names)
    assert "etc/.wh.b" in names
    assert names.index("etc/") < names.index("etc/a")  # parents come first
    assert ("usr/bin/newlink", tar.LNKTYPE) in entries or ("etc/new", tar.LNKTYPE) in entries
    assert ("linked2", tar.LNKTYPE) in entries

    _cp(lower, check)
    apply_result = apply(check, blob)
    assert apply_result.diff_id == result.diff_id
    assert tree(check) == tree(upper)
    assert (check / "etc/new").stat().st_ino == (check / "usr/bin/newlink").stat().st_ino


def test_diff_is_deterministic_and_readable_by_tarfile(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    _base(upper)
    os.setxattr(upper / "same", "user.not_archived", b"1")  # only capabilities are
    (upper / ("ünïcode-" + "n" * 120)).write_bytes(b"u")
    blobs = []
    for comp in ("gzip", "gzip", "none"):
        out = io.BytesIO()
        archive.write_diff(lower, upper, out, mode="double-walk", compression=comp)  # type: ignore[arg-type]
        blobs.append(out.getvalue())
    assert blobs[0] == blobs[1]
    assert gzip.decompress(blobs[0]) == blobs[2]
    with tarfile.open(fileobj=io.BytesIO(blobs[2])) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["etc/a"].size == 1 and members["link"].linkname == "etc/a"
    assert members["ünïcode-" + "n" * 120].isreg()
    assert all(not m.pax_headers.get("SCHILY.xattr.user.not_archived") for m in members.values())
    # Without a lower everything is added.
    assert archive.write_diff(None, upper, io.BytesIO(), mode="double-walk").diff_id == (
        sha256(blobs[2])
    )


def test_diff_skips_sockets(tmp_path: Path) -> None:
    import socket

    upper = tmp_path / "u"
    upper.mkdir()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(upper / "sock"))
        (upper / "f").write_bytes(b"1")
        out = io.BytesIO()
        archive.write_diff(None, upper, out, mode="double-walk", compression="none")
    finally:
        s.close()
    assert [n for n, _ in _entries(out.getvalue())] == ["f"]


def test_diff_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        archive.write_diff(None, tmp_path, io.BytesIO(), mode="aufs")  # type: ignore[arg-type]
    with pytest.raises(errdefs.InvalidArgument):
        archive.write_diff(None, tmp_path, io.BytesIO(), mode="overlay", compression="lz4")  # type: ignore[arg-type]


def test_double_walk_changes_semantics(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "dir").mkdir()
    (a / "dir/child").write_bytes(b"1")
    (a / "dir-sibling").write_bytes(b"1")
    (b / "dir").write_bytes(b"now a file")
    (b / "dir-sibling").write_bytes(b"1")
    t = 1_700_000_000 * 10**9
    os.utime(a / "dir-sibling", ns=(t, t))
    os.utime(b / "dir-sibling", ns=(t, t))
    changes = [(k.value, p) for k, p, _ in archive.double_walk_changes(a, b)]
    assert changes == [("modify", "dir")]
    # Same second, no sub-second part: contents decide.
    (b / "dir-sibling").write_bytes(b"2")
    os.utime(b / "dir-sibling", ns=(t, t))
    changes = [(k.value, p) for k, p, _ in archive.double_walk_changes(a, b)]
    assert ("modify", "dir-sibling") in changes


@needs_root
def test_overlay_upper_diff(tmp_path: Path) -> None:
    lower, upper, check = tmp_path / "lower", tmp_path / "upper", tmp_path / "check"
    for p in (lower, upper, check):
        p.mkdir()
    _base(lower)
    # What overlayfs leaves in an upper dir after: edit etc/a, rm etc/b, rm -rf gone &&
    # mkdir gone (opaque), add usr/bin/more (usr, usr/bin copied up unchanged).
    (upper / "etc").mkdir()
    os.chmod(upper / "etc", 0o755)
    (upper / "etc/a").write_bytes(b"edited")
    os.mknod(upper / "etc/b", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "gone").mkdir()
    os.setxattr(upper / "gone", "trusted.overlay.opaque", b"y")
    (upper / "gone/fresh").write_bytes(b"f")
    for p in ("usr", "usr/bin"):
        (upper / p).mkdir()
        st = (lower / p).stat()
        os.chmod(upper / p, stat.S_IMODE(st.st_mode))
        os.utime(upper / p, ns=(st.st_atime_ns, st.st_mtime_ns))
    (upper / "usr/bin/more").write_bytes(b"m")
    (upper / "etc").touch()

    out = io.BytesIO()
    archive.write_diff(lower, upper, out, mode="overlay")
    names = [n for n, _ in _entries(out.getvalue())]
    assert "etc/.wh.b" in names and "gone/.wh..wh..opq" in names
    assert names.index("gone/") < names.index("gone/.wh..wh..opq") < names.index("gone/fresh")
    assert "usr/" in names and names.index("usr/bin/") < names.index("usr/bin/more")

    _cp(lower, check)
    apply(check, out.getvalue())
    assert sorted(os.listdir(check / "gone")) == ["fresh"]
    assert not (check / "etc/b").exists()
    assert (check / "etc/a").read_bytes() == b"edited"
    assert (check / "usr/bin/more").exists() and (check / "usr/bin/tool").exists()

    # And the same layer applied in overlay mode gives back an equivalent upper dir.
    upper2 = tmp_path / "upper2"
    upper2.mkdir()
    apply(upper2, out.getvalue(), mode="overlay", parents=[lower])
    out2 = io.BytesIO()
    archive.write_diff(lower, upper2, out2, mode="overlay")
    assert _entries(out2.getvalue()) == _entries(out.getvalue())


@needs_root
def test_diff_carries_file_capabilities(tmp_path: Path) -> None:
    upper = tmp_path / "u"
    upper.mkdir()
    (upper / "ping").write_bytes(b"p")
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    os.setxattr(upper / "ping", "security.capability", cap)
    out = io.BytesIO()
    archive.write_diff(None, upper, out, mode="double-walk", compression="none")
    [(header, _)] = tar.read_all(out.getvalue())
    assert header.xattrs == {"security.capability": cap}


def test_deep_nesting(root: Path) -> None:
    try:
        # Deeper than Python's recursion limit; every path stays under PATH_MAX.
        deep = "d/" * 1500
        apply(root, layer(f(deep + "leaf", b"x"), f(deep + "leaf2", b"y"), f("top", b"t")))
        assert (root / (deep + "leaf")).read_bytes() == b"x"
        # Deeper than PATH_MAX: refused cleanly, naming the entry.
        deeper = "e/" * 2100 + "leaf"
        with pytest.raises(LayerError, match="leaf"):
            apply(root, layer(f(deeper, b"z")))
        # Whiteouts and opaque markers remove deep trees without recursion.
        apply(root, layer(d("d/"), d("d/d/"), f("d/d/mine"), f("d/d/.wh..wh..opq")))
        assert os.listdir(root / "d/d") == ["mine"]
        apply(root, layer(f(".wh.d"), f(".wh.e")))
        assert sorted(os.listdir(root)) == ["top"]
    finally:
        # Trees this deep defeat shutil.rmtree (and so pytest's tmp_path clean-up).
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_many_directories_exceed_the_fd_cache(root: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    entries = [f(f"dir{i:03d}/sub/file", b"%d" % i) for i in range(300)]
    entries += [f(f"dir{i:03d}/again", b"a") for i in range(0, 300, 7)]
    apply(root, layer(*entries))
    assert len(os.listdir(root)) == 300
    assert (root / "dir299/sub/file").read_bytes() == b"299"
    assert (root / "dir294/again").exists()
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # every fd was closed
