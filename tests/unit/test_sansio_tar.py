"""pycontainerd.sansio.tar: the tar reader/writer, path rules and layer decisions."""

from __future__ import annotations

import io
import itertools
import posixpath
import re
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycontainerd import errdefs
from pycontainerd.sansio import tar
from pycontainerd.sansio.tar import (
    ARCHIVE_END,
    ENTRY_END,
    NEED_DATA,
    CreateFile,
    Data,
    Hardlink,
    LayerError,
    Mkdir,
    Mknod,
    Opaque,
    Skip,
    Symlink,
    TarHeader,
    TarReader,
    TruncatedLayer,
    Whiteout,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "pycontainerd" / "sansio" / "tar.py"


def test_no_io_imports() -> None:
    # Read import lines as text: ast.parse trips CPython 3.11's "AST constructor
    # recursion depth mismatch" after other tests (hypothesis) change the recursion limit.
    banned = {"os", "asyncio", "socket", "subprocess", "grpc", "io", "threading", "shutil"}
    pattern = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))", re.M)
    for match in pattern.finditer(SRC.read_text()):
        names = [match.group(1)] if match.group(1) else match.group(2).split(",")
        for name in names:
            top = name.strip().split(".")[0].split(" ")[0]
            assert top not in banned, name
            if top == "pycontainerd":
                assert name == "pycontainerd.errdefs", name


def test_layer_error_is_invalid_argument() -> None:
    assert issubclass(LayerError, errdefs.InvalidArgument)
    assert issubclass(TruncatedLayer, LayerError)


# ---------------------------------------------------------------------------
# Reading what others write
# ---------------------------------------------------------------------------


def _tarfile_archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        d = tarfile.TarInfo("dir/")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 100
        tf.addfile(d)
        f = tarfile.TarInfo(
            "dir/" + "x" * 120 + "/file" if fmt != tarfile.USTAR_FORMAT else "dir/f"
        )
        f.size, f.mode, f.uid, f.gid, f.mtime = 5, 0o4755, 1000, 1001, 1234
        f.uname, f.gname = "alice", "staff"
        tf.addfile(f, io.BytesIO(b"hello"))
        ln = tarfile.TarInfo("ln")
        ln.type, ln.linkname = tarfile.SYMTYPE, "/" + "t" * 150 if fmt != 0 else "/t"
        if fmt == tarfile.USTAR_FORMAT:
            ln.linkname = "/t"
        tf.addfile(ln)
        hl = tarfile.TarInfo("hl")
        hl.type, hl.linkname = tarfile.LNKTYPE, "dir/f"
        tf.addfile(hl)
        dev = tarfile.TarInfo("dev/null")
        dev.type, dev.devmajor, dev.devminor, dev.mode = tarfile.CHRTYPE, 1, 3, 0o666
        tf.addfile(dev)
        fifo = tarfile.TarInfo("fifo")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_reads_tarfile_formats(fmt: int) -> None:
    raw = _tarfile_archive(fmt)
    entries = tar.read_all(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        expected = tf.getmembers()
    assert [h.name.rstrip("/") for h, _ in entries] == [m.name for m in expected]
    for (header, data), member in zip(entries, expected, strict=True):
        assert header.linkname == member.linkname
        assert (header.mode, header.uid, header.gid) == (member.mode, member.uid, member.gid)
        assert header.mtime_ns == int(member.mtime) * 10**9
        assert header.uname == member.uname
        assert (header.devmajor, header.devminor) == (member.devmajor, member.devminor)
        assert header.size == len(data) == (member.size if member.isreg() else 0)
    assert entries[1][1] == b"hello"
    assert entries[3][0].typeflag == tar.LNKTYPE


def test_reads_pax_xattrs_binary_values_and_non_utf8_names() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(b"caf\xe9-\xff".decode("utf-8", "surrogateescape"))
        ti.pax_headers = {
            "SCHILY.xattr.security.capability": b"\x01\x00\x00\x02\xff".decode(
                "utf-8", "surrogateescape"
            ),
            "SCHILY.xattr.user.k": "v",
        }
        tf.addfile(ti)
    [(header, _)] = tar.read_all(buf.getvalue())
    assert header.name.encode("utf-8", "surrogateescape") == b"caf\xe9-\xff"
    assert header.xattrs == {"security.capability": b"\x01\x00\x00\x02\xff", "user.k": b"v"}


def test_go_style_quirks() -> None:
    # Header-only entries never have data, whatever their size field says.
    block = bytearray(tar.encode_header(TarHeader(name="d/", typeflag=tar.DIRTYPE)))
    block[124:136] = b"%011o\x00" % 1000
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    raw = bytes(block) + tar.encode_entry(TarHeader(name="f", size=1), b"z") + tar.END_OF_ARCHIVE
    entries = tar.read_all(raw)
    assert [(h.name, h.size, d) for h, d in entries] == [("d/", 0, b""), ("f", 1, b"z")]
    # An old-style regular type with a trailing slash is a directory.
    old = bytearray(tar.encode_header(TarHeader(name="old/")))
    old[156] = 0
    old[148:156] = b" " * 8
    old[148:156] = b"%06o\x00 " % sum(old)
    [(h, _)] = tar.read_all(bytes(old))
    assert h.typeflag == tar.DIRTYPE


def test_global_header_is_an_entry_of_its_own() -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "hi"}
    ) as tf:
        tf.addfile(tarfile.TarInfo("a"))
    entries = tar.read_all(buf.getvalue())
    assert entries[0][0].typeflag == tar.XGLTYPE
    assert entries[0][0].pax == (("comment", b"hi"),)
    assert entries[1][0].name == "a"
    assert entries[1][0].pax == ()  # not merged, as in Go
    assert isinstance(tar.plan(entries[0][0]), Skip)


def test_end_of_input_on_block_boundary_ends_archive() -> None:
    raw = tar.encode_entry(TarHeader(name="a", size=3), b"abc")
    assert [h.name for h, _ in tar.read_all(raw)] == ["a"]
    # ... and so does a single zero block, or end of input inside the padding (Go).
    assert len(tar.read_all(raw + bytes(512))) == 1
    assert len(tar.read_all(raw[:-100])) == 1


def test_events_in_order() -> None:
    reader = TarReader()
    reader.receive_data(tar.encode_entry(TarHeader(name="a", size=2), b"hi") + tar.END_OF_ARCHIVE)
    events = []
    while (ev := reader.next_event()) is not NEED_DATA:
        events.append(ev)
        if ev is ARCHIVE_END:
            break
    assert isinstance(events[0], TarHeader)
    assert events[1:] == [Data(b"hi"), ENTRY_END, ARCHIVE_END]
    reader.receive_data(b"")
    assert reader.next_event() is ARCHIVE_END
    with pytest.raises(RuntimeError):
        reader.receive_data(b"x")


# ---------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------


def _reader_error(raw: bytes) -> LayerError:
    with pytest.raises(LayerError) as info:
        tar.read_all(raw)
    return info.value


def test_bad_checksum() -> None:
    raw = bytearray(tar.encode_entry(TarHeader(name="a")))
    raw[0] = ord("b")
    assert "checksum" in str(_reader_error(bytes(raw)))


def test_truncated_header_and_data() -> None:
    raw = tar.encode_entry(TarHeader(name="big", size=10_000), bytes(10_000))
    assert isinstance(_reader_error(raw[:300]), TruncatedLayer)
    err = _reader_error(raw[:2048])
    assert isinstance(err, TruncatedLayer)
    assert "'big'" in str(err) and "1536 of 10000" in str(err)


def test_size_bomb_header_is_refused_or_truncated() -> None:
    header = tar.encode_header(TarHeader(name="bomb", size=10 << 30))
    err = _reader_error(header)
    assert isinstance(err, TruncatedLayer) and "'bomb'" in str(err)
    huge = tar.encode_header(TarHeader(name="absurd", size=1 << 50))
    err = _reader_error(huge)
    assert not isinstance(err, TruncatedLayer)
    assert "'absurd'" in str(err) and "exceeds" in str(err)


def _with_pax(body: bytes, header: TarHeader) -> bytes:
    block = tar._ustar_block(
        name=b"pax", mode=0o644, uid=0, gid=0, size=len(body), mtime=0, typeflag=tar.XHDTYPE
    )
    return block + body + tar.padding(len(body)) + tar.encode_entry(header)


def test_extended_header_limits_and_format() -> None:
    big = bytearray(tar.encode_header(TarHeader(name="a" * 200))[:512])
    big[124:136] = b"%011o\x00" % (2 << 20)
    big[148:156] = b" " * 8
    big[148:156] = b"%06o\x00 " % sum(big)
    assert "extended header" in str(_reader_error(bytes(big)))
    assert "PAX header" in str(_reader_error(_with_pax(b"99 path=x\n", TarHeader(name="a"))))
    assert "PAX size" in str(_reader_error(_with_pax(b"10 size=x\n", TarHeader(name="a"))))
    with pytest.raises(LayerError):
        tar.parse_pax_records(b"5 =x\n")
    with pytest.raises(LayerError):
        tar.parse_pax_records(b"12 pathx\n")
    [(h, _)] = tar.read_all(_with_pax(b"12 path=abc\n", TarHeader(name="zzz")))
    assert h.name == "abc"


def test_pax_header_without_entry_is_truncated() -> None:
    raw = tar.encode_header(TarHeader(name="n" * 200))
    assert isinstance(_reader_error(raw[:1024]), TruncatedLayer)


def test_sparse_refused() -> None:
    sparse = TarHeader(name="s", pax=(("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")))
    assert "sparse" in str(_reader_error(tar.encode_entry(sparse)))


def test_nul_in_names_refused() -> None:
    err = _reader_error(_with_pax(b"12 path=a\0b\n", TarHeader(name="x")))
    assert "NUL" in str(err)
    err = _reader_error(_with_pax(b"16 linkpath=a\0b\n", TarHeader(name="x")))
    assert "NUL" in str(err)
    with pytest.raises(LayerError):
        tar.encode_header(TarHeader(name="a\0b"))


def test_data_after_zero_block_and_bad_numbers() -> None:
    raw = bytes(512) + tar.encode_entry(TarHeader(name="late"))
    assert "zero block" in str(_reader_error(raw))
    block = bytearray(tar.encode_header(TarHeader(name="neg")))
    block[108:116] = b"\xff" * 8  # base-256 negative uid
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    assert "negative uid" in str(_reader_error(bytes(block)))
    block[108:116] = b"00x0000\0"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    assert "bad uid" in str(_reader_error(bytes(block)))


def test_base256_numbers_round_trip() -> None:
    header = TarHeader(name="dev", typeflag=tar.CHRTYPE, devmajor=1 << 30, devminor=7)
    [(back, _)] = tar.read_all(tar.encode_header(header))
    assert back == header


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    min_size=1,
    max_size=300,
)
_types = st.sampled_from(
    [tar.REGTYPE, tar.DIRTYPE, tar.SYMTYPE, tar.LNKTYPE, tar.CHRTYPE, tar.BLKTYPE, tar.FIFOTYPE]
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[TarHeader, bytes]:
    typeflag = draw(_types)
    data = draw(st.binary(max_size=1500)) if typeflag == tar.REGTYPE else b""
    xattrs = draw(
        st.dictionaries(
            st.text(alphabet="abcdefghij.", min_size=1, max_size=20).map(lambda k: "user." + k),
            st.binary(max_size=40),
            max_size=3,
        )
    )
    header = TarHeader(
        name=draw(_names),
        typeflag=typeflag,
        size=len(data),
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 1 << 40)),
        gid=draw(st.integers(0, 1 << 40)),
        mtime_ns=draw(st.integers(-(10**18), 1 << 62)),
        linkname=draw(st.one_of(st.just(""), _names)),
        uname=draw(st.text(max_size=40).filter(lambda s: "\0" not in s)),
        gname=draw(st.text(max_size=40).filter(lambda s: "\0" not in s)),
        devmajor=draw(st.integers(0, 1 << 40)) if typeflag in (tar.CHRTYPE, tar.BLKTYPE) else 0,
        devminor=draw(st.integers(0, 1 << 40)) if typeflag in (tar.CHRTYPE, tar.BLKTYPE) else 0,
        atime_ns=draw(st.one_of(st.none(), st.integers(0, 1 << 62))),
        pax=tuple(sorted((tar.PAX_XATTR_PREFIX + k, v) for k, v in xattrs.items())),
    )
    return header, data


def _feed_in_pieces(raw: bytes, cuts: list[int]) -> list[tuple[TarHeader, bytes]]:
    reader = TarReader()
    entries: list[tuple[TarHeader, bytes]] = []
    chunks: list[bytes] = []
    positions = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    pieces = [raw[a:b] for a, b in itertools.pairwise(positions)]
    pieces = [p for p in pieces if p] + [b""]
    for piece in pieces:
        reader.receive_data(piece)
        while (ev := reader.next_event()) is not NEED_DATA:
            if ev is ARCHIVE_END:
                return entries
            if isinstance(ev, TarHeader):
                entries.append((ev, b""))
                chunks = []
            elif isinstance(ev, Data):
                chunks.append(ev.data)
            else:
                entries[-1] = (entries[-1][0], b"".join(chunks))
    raise AssertionError("no end of archive")


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(headers(), max_size=4), st.lists(st.integers(0, 10**6), max_size=12))
def test_encode_then_read_round_trip(
    entries: list[tuple[TarHeader, bytes]], cuts: list[int]
) -> None:
    raw = b"".join(tar.encode_entry(h, d) for h, d in entries) + tar.END_OF_ARCHIVE
    assert len(raw) % 512 == 0
    assert _feed_in_pieces(raw, cuts) == entries


@settings(max_examples=60, deadline=None)
@given(headers())
def test_python_tarfile_reads_our_output(entry: tuple[TarHeader, bytes]) -> None:
    header, data = entry
    raw = tar.encode_entry(header, data) + tar.END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", errors="surrogateescape") as tf:
        [member] = tf.getmembers()
    assert member.name == header.name.rstrip("/") or member.name == header.name
    assert (member.uid, member.gid, member.mode) == (header.uid, header.gid, header.mode)
    assert member.size == len(data)
    assert member.linkname == (header.linkname if header.typeflag in "12" else member.linkname)


def test_encoding_is_deterministic() -> None:
    h = TarHeader(name="é/" + "n" * 200, size=1, pax=(("SCHILY.xattr.user.b", b"1"),))
    assert tar.encode_entry(h, b"x") == tar.encode_entry(h, b"x")
    with pytest.raises(LayerError):
        tar.encode_header(TarHeader(name="a", pax=(("path", b"b"),)))
    with pytest.raises(LayerError):
        tar.encode_entry(TarHeader(name="a", size=2), b"x")


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


@given(st.text(alphabet="ab./", max_size=40) | st.text(max_size=40))
def test_clean_path_never_escapes(name: str) -> None:
    path = tar.clean_path(name)
    assert not path.startswith("/")
    parts = path.split("/") if path else []
    assert all(p not in ("", ".", "..") for p in parts)
    assert tar.clean_path(path) == path
    # The same as a POSIX lexical clean of "/" + name, as containerd does.
    assert path == posixpath.normpath("/" + name).lstrip("/")


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/x", "abs/x"),
        ("a/../../b", "b"),
        ("./", ""),
        ("a//b/./c/", "a/b/c"),
        ("..", ""),
    ],
)
def test_clean_path_examples(name: str, clean: str) -> None:
    assert tar.clean_path(name) == clean


@given(st.text(alphabet="ab./", max_size=30))
def test_clean_link_target(link: str) -> None:
    try:
        target = tar.clean_link_target("e", link)
    except LayerError as exc:
        assert "escapes" in str(exc) or "is the root" in str(exc)
        return
    assert target and target == tar.clean_path(link)


class FakeFS:
    """Symlinks by path; every other path is a directory or does not exist."""

    def __init__(self, links: dict[str, str]) -> None:
        self.links = links
        self.asked: list[str] = []

    def readlink(self, path: str) -> str | None:
        assert path and not path.startswith("/") and ".." not in path.split("/")
        self.asked.append(path)
        return self.links.get(path)


_comp = st.sampled_from(["a", "b", "c", "..", ".", ""])
_paths = st.lists(_comp, max_size=6).map("/".join)
_targets = st.tuples(st.booleans(), _paths).map(lambda t: ("/" if t[0] else "") + t[1])
_clean = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join)


@settings(max_examples=300)
@given(st.dictionaries(_clean, _targets, max_size=6), _paths, st.booleans())
def test_resolve_stays_in_root(links: dict[str, str], path: str, follow: bool) -> None:
    fs = FakeFS(links)
    try:
        out = tar.resolve(path, fs.readlink, follow_final=follow)
    except LayerError as exc:
        assert "symbolic links" in str(exc)
        return
    parts = out.split("/") if out else []
    assert all(p not in ("", ".", "..") for p in parts)
    # Every proper prefix was checked and is not a symlink: nothing is written through one.
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        assert prefix not in links
        assert prefix in fs.asked
    if follow and parts:
        assert out not in links


def test_resolve_examples() -> None:
    fs = FakeFS({"a": "/tmp/outside", "up": "../../..", "loop1": "loop2", "loop2": "loop1"})
    assert tar.resolve("a/x", fs.readlink) == "tmp/outside/x"
    assert tar.resolve("up/etc", fs.readlink) == "etc"
    assert tar.resolve("a", fs.readlink, follow_final=False) == "a"
    with pytest.raises(LayerError, match="symbolic links"):
        tar.resolve("loop1/x", fs.readlink)
    rel = FakeFS({"d/l": "../e", "e": "f/g"})
    assert tar.resolve("d/l/h", rel.readlink) == "f/g/h"


# ---------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------


def _attrs_ok(op: tar.Op) -> None:
    attrs = getattr(op, "attrs", None)
    if attrs is not None:
        assert 0 <= attrs.mode <= 0o7777
        assert 0 <= attrs.mtime_ns <= attrs.atime_ns or attrs.atime_ns == 0


@settings(max_examples=400)
@given(
    st.lists(st.sampled_from(["a", "/", ".", "..", ".wh.", ".wh..wh..opq"]), max_size=10).map(
        "".join
    )
    | st.text(max_size=30),
    st.sampled_from([*"0123456", "7", "g", "x", "V", "S", "\0"]),
    st.text(alphabet="ab./", max_size=20),
)
def test_plan_paths_stay_inside_root(name: str, typeflag: str, linkname: str) -> None:
    header = TarHeader(name=name, typeflag=typeflag, linkname=linkname)
    try:
        op = tar.plan(header)
    except LayerError as exc:
        assert repr(name) in str(exc)
        return
    for attr in ("path", "target", "dir"):
        value = getattr(op, attr, None)
        if value is None or (attr == "target" and isinstance(op, Symlink)):
            continue
        assert value == tar.clean_path(value)
        if attr != "dir":
            assert value, op
    _attrs_ok(op)


def test_plan_examples() -> None:
    h = TarHeader
    assert tar.plan(h(name="../../etc/passwd", size=3)) == CreateFile(
        "../../etc/passwd",
        "etc/passwd",
        tar.Attrs(mode=0o644, uid=0, gid=0, atime_ns=0, mtime_ns=0),
        3,
    )
    assert isinstance(tar.plan(h(name="./", typeflag=tar.DIRTYPE)), Skip)
    assert isinstance(tar.plan(h(name="usr/", typeflag=tar.DIRTYPE)), Mkdir)
    assert tar.plan(h(name="a/.wh..wh..opq")) == Opaque("a/.wh..wh..opq", "a")
    assert tar.plan(h(name=".wh..wh..opq")) == Opaque(".wh..wh..opq", "")
    assert tar.plan(h(name="a/.wh.b", uid=3, gid=4)) == Whiteout("a/.wh.b", "a/b", 3, 4)
    assert isinstance(tar.plan(h(name="a/.wh..wh.plnk")), Skip)
    sym = tar.plan(h(name="l", typeflag=tar.SYMTYPE, linkname="/etc/shadow"))
    assert isinstance(sym, Symlink) and sym.target == "/etc/shadow"
    link = tar.plan(h(name="h", typeflag=tar.LNKTYPE, linkname="/usr/bin/x"))
    assert isinstance(link, Hardlink) and link.target == "usr/bin/x"
    dev = tar.plan(h(name="dev/null", typeflag=tar.CHRTYPE, devmajor=1, devminor=3, mode=0o666))
    assert isinstance(dev, Mknod) and (dev.kind, dev.major, dev.minor) == ("char", 1, 3)
    assert tar.plan(h(name="f", typeflag="7")) == tar.plan(h(name="f"))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (TarHeader(name=".wh..."), "invalid whiteout"),
        (TarHeader(name="a/.wh.."), "invalid whiteout"),
        (TarHeader(name="a/.wh."), "invalid whiteout"),
        (TarHeader(name="/"), "layer root"),
        (TarHeader(name="..", typeflag=tar.SYMTYPE, linkname="x"), "layer root"),
        (TarHeader(name="l", typeflag=tar.LNKTYPE, linkname="../../etc/shadow"), "escapes"),
        (TarHeader(name="l", typeflag=tar.LNKTYPE, linkname="a/../../x"), "escapes"),
        (TarHeader(name="l", typeflag=tar.LNKTYPE, linkname="./"), "is the root"),
        (TarHeader(name="s", typeflag=tar.SYMTYPE), "empty target"),
        (TarHeader(name="v", typeflag="V"), "unsupported tar entry type"),
        (TarHeader(name="n", uid=-1), "negative"),
    ],
)
def test_plan_refuses(header: TarHeader, message: str) -> None:
    with pytest.raises(LayerError, match=message) as info:
        tar.plan(header)
    assert repr(header.name) in str(info.value)


def test_plan_attrs_follow_containerd() -> None:
    header = TarHeader(
        name="f",
        mode=0o104755,
        mtime_ns=5 * 10**9,
        atime_ns=10**9,
        pax=(
            ("SCHILY.xattr.security.capability", b"\x01"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.k", b"v"),
        ),
    )
    op = tar.plan(header)
    assert isinstance(op, CreateFile)
    assert op.attrs.mode == 0o4755
    assert op.attrs.atime_ns == 5 * 10**9  # atime is never before mtime
    assert op.attrs.xattrs == (("security.capability", b"\x01"), ("user.k", b"v"))
    assert op.attrs.ignored_xattrs == ("trusted.overlay.opaque",)
    far = tar.plan(TarHeader(name="f", mtime_ns=-(10**9)))
    assert isinstance(far, CreateFile) and far.attrs.mtime_ns == 0


def test_write_side_headers() -> None:
    import stat

    d = tar.header_for("a/b", st_mode=stat.S_IFDIR | 0o755, uid=1, gid=2, size=4096, mtime_ns=1)
    assert d is not None and d.name == "a/b/" and d.size == 0 and d.mtime_ns == 0
    f = tar.header_for(
        "f", st_mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=9, mtime_ns=3_500_000_000
    )
    assert f is not None and f.size == 9 and f.mtime_ns == 3_000_000_000
    assert tar.header_for("s", st_mode=stat.S_IFSOCK, uid=0, gid=0, size=0, mtime_ns=0) is None
    assert tar.whiteout_header("a/b").name == "a/.wh.b"
    assert tar.whiteout_header("b").name == ".wh.b"
    assert tar.opaque_header("a").name == "a/.wh..wh..opq"
    assert tar.opaque_header("").name == ".wh..wh..opq"
