"""A corpus of malicious and awkward layers, applied as root.

Each case builds its layer in the test, applies it to ``<tmp>/root`` and then checks
that nothing outside the root changed: a sentinel tree next to the root (which
absolute and relative symlinks in the layers point at) and the host files the layers
aim for (``/etc/passwd``, ``/etc/shadow``) are compared before and after. Failures
must be clear: a LayerError whose message names the offending entry.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycontainerd import archive
from pycontainerd.sansio import tar
from pycontainerd.sansio.tar import LayerError, TarHeader, TruncatedLayer
from tests.unit.test_archive_helpers import d, f, gz, hard, layer, sym, tree

HOST_FILES = [Path("/etc/passwd"), Path("/etc/shadow"), Path("/etc/hostname")]


def _host_state() -> dict[str, tuple[object, ...]]:
    state: dict[str, tuple[object, ...]] = {}
    for p in HOST_FILES:
        if p.exists():
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            state[str(p)] = (st.st_ino, st.st_nlink, st.st_mode, st.st_mtime_ns, digest)
    return state


@dataclass
class World:
    base: Path
    root: Path
    outside: Path

    def snapshot(self) -> tuple[object, ...]:
        # Everything in the world except the root itself, plus the host files.
        around = {
            k: v for k, v in tree(self.base).items() if k != "root" and not k.startswith("root/")
        }
        return around, _host_state(), tree(self.outside)

    def apply(self, blob: bytes, mode: archive.WhiteoutMode = "delete") -> archive.ApplyResult:
        return archive.apply_layer(self.root, io.BytesIO(blob), whiteout_mode=mode)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sentinel").write_bytes(b"do not touch")
    (outside / "sub/deep").write_bytes(b"deep")
    os.symlink("sentinel", outside / "alias")
    root = tmp_path / "root"
    root.mkdir()
    w = World(tmp_path, root, outside)
    before = w.snapshot()
    yield w
    assert w.snapshot() == before, "something outside the root changed"


def _fails(w: World, blob: bytes, entry: str, *, mode: archive.WhiteoutMode = "delete") -> str:
    with pytest.raises(LayerError) as info:
        w.apply(blob, mode)
    message = str(info.value)
    assert repr(entry) in message, message
    return message


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_dotdot_names_are_clamped_into_the_root(world: World) -> None:
    world.apply(
        layer(
            f("../../../../etc/passwd", b"root::0:0::/:/bin/sh\n"),
            f("../outside/sentinel", b"owned"),
            f("/outside/sub/deep", b"owned"),
            f("a/../../../b", b"b"),
        )
    )
    assert (world.root / "etc/passwd").read_bytes().startswith(b"root::")
    assert (world.root / "outside/sentinel").read_bytes() == b"owned"
    assert (world.root / "outside/sub/deep").read_bytes() == b"owned"
    assert (world.root / "b").exists()


def test_absolute_symlink_then_file_through_it(world: World) -> None:
    out = str(world.outside)
    world.apply(layer(sym("evil", out), f("evil/sentinel", b"owned"), f("evil/new", b"x")))
    # Followed as if the root were "/": the write lands in <root><outside>/...
    inside = world.root / out.lstrip("/")
    assert (inside / "sentinel").read_bytes() == b"owned"
    assert (inside / "new").exists()
    assert os.readlink(world.root / "evil") == out


def test_symlinked_parent_directories(world: World) -> None:
    out = str(world.outside)
    world.apply(
        layer(
            sym("a", out),
            sym("up", "../../../../../../.."),
            sym("rel", "../outside"),
            f("a/sub/deep", b"owned"),
            f("up" + out + "/sentinel", b"owned"),
            f("rel/sentinel", b"owned"),
            d("a/newdir/"),
            f("a/newdir/f", b"f"),
        )
    )
    inside = world.root / out.lstrip("/")
    assert (inside / "sub/deep").read_bytes() == b"owned"
    assert (inside / "sentinel").read_bytes() == b"owned"
    assert (world.root / "outside/sentinel").read_bytes() == b"owned"
    assert (inside / "newdir/f").exists()


def test_symlink_chain_from_a_lower_layer(world: World) -> None:
    # The symlinks come from an earlier layer (already on disk), the write from a later one.
    out = str(world.outside)
    world.apply(layer(sym("lib", "usr/lib"), sym("usr/lib", out), sym("x", "/usr/../lib/")))
    world.apply(layer(f("lib/sentinel", b"owned"), f("x/alias", b"owned")))
    inside = world.root / out.lstrip("/")
    assert (inside / "sentinel").read_bytes() == b"owned"
    # "alias" was a symlink only in the sentinel tree; inside the root it is a new file.
    assert (inside / "alias").read_bytes() == b"owned"


def test_symlink_replaced_not_written_through(world: World) -> None:
    target = str(world.outside / "sentinel")
    world.apply(layer(sym("link", target)))
    world.apply(layer(f("link", b"replaces the link")))
    assert (world.root / "link").read_bytes() == b"replaces the link"
    world.apply(layer(sym("dirlink", str(world.outside)), d("dirlink/", mode=0o777)))
    assert (world.root / "dirlink").is_dir() and not (world.root / "dirlink").is_symlink()


def test_symlink_loop(world: World) -> None:
    message = _fails(world, layer(sym("a", "b"), sym("b", "/a"), f("a/x")), "a/x")
    assert "symbolic links" in message


def test_file_where_a_directory_is_needed(world: World) -> None:
    message = _fails(world, layer(f("etc", b"f"), f("etc/passwd", b"p")), "etc/passwd")
    assert "not a directory" in message


# ---------------------------------------------------------------------------
# Hardlinks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "linkname", ["../../etc/shadow", "a/../../etc/shadow", "../" * 20 + "etc/passwd"]
)
def test_hardlink_escape_refused(world: World, linkname: str) -> None:
    message = _fails(world, layer(d("a/"), hard("link", linkname)), "link")
    assert "escapes" in message
    assert not (world.root / "link").exists()


def test_hardlink_through_symlinks_stays_inside(world: World) -> None:
    out = str(world.outside)
    world.apply(layer(sym("etc", "/host-etc"), sym("o", out)))
    # /etc/shadow as seen from the root is <root>/etc/shadow: it does not exist there.
    _fails(world, layer(hard("h1", "/etc/shadow")), "h1")
    _fails(world, layer(hard("h2", "o/sentinel")), "h2")
    world.apply(layer(f("real", b"r"), sym("s", "/real"), hard("h3", "s")))
    # A hardlink to a symlink links the symlink itself, not what it points at.
    assert (world.root / "h3").is_symlink()


# ---------------------------------------------------------------------------
# Whiteouts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["delete", "overlay"])
@pytest.mark.parametrize("name", [".wh...", "a/.wh..", "a/.wh.", "a/b/.wh..."])
def test_whiteout_of_dot_and_dotdot(world: World, mode: archive.WhiteoutMode, name: str) -> None:
    world.apply(layer(f("a/b/keep", b"k")))
    _fails(world, layer(f(name)), name, mode=mode)
    assert (world.root / "a/b/keep").exists()


@pytest.mark.parametrize("mode", ["delete", "overlay"])
def test_whiteouts_through_symlinks_stay_inside(world: World, mode: archive.WhiteoutMode) -> None:
    out = str(world.outside)
    world.apply(layer(sym("o", out), sym("r", "../outside"), f("kept", b"k")))
    world.apply(
        layer(
            f("o/.wh.sentinel"),
            f("r/.wh.other"),
            f("../outside/.wh.alias"),
            f("o/.wh..wh..opq"),
            f("r/sub/.wh..wh..opq"),
        ),
        mode,
    )
    assert (world.root / "kept").exists()
    if mode == "overlay":
        inside = world.root / out.lstrip("/")
        assert stat.S_ISCHR((inside / "sentinel").lstat().st_mode)
        assert os.getxattr(inside, "trusted.overlay.opaque") == b"y"


def test_whiteout_of_a_symlink_removes_the_link_only(world: World) -> None:
    world.apply(layer(d("dir/"), f("dir/f", b"1"), sym("ld", "dir"), sym("lo", str(world.outside))))
    world.apply(layer(f(".wh.ld"), f(".wh.lo")))
    assert (world.root / "dir/f").exists()
    assert not os.path.lexists(world.root / "ld") and not os.path.lexists(world.root / "lo")


# ---------------------------------------------------------------------------
# Sizes and truncation
# ---------------------------------------------------------------------------


def _usage(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, check=True)
    return int(out.stdout.split()[0])


@pytest.mark.parametrize("wrap", [lambda b: b, gz], ids=["tar", "gzip"])
def test_size_bomb_header_without_data(world: World, wrap: Callable[[bytes], bytes]) -> None:
    header = tar.encode_header(TarHeader(name="usr/lib/huge.img", size=10 << 30))
    blob = wrap(tar.encode_entry(TarHeader(name="first", size=3), b"abc") + header + b"x" * 1000)
    with pytest.raises(TruncatedLayer) as info:
        world.apply(blob)
    message = str(info.value)
    assert "'usr/lib/huge.img'" in message and "1000 of 10737418240" in message
    huge = world.root / "usr/lib/huge.img"
    assert huge.lstat().st_size == 1000  # what arrived, never the announced size
    assert _usage(world.root) < 1 << 20


def test_absurd_size_refused_before_writing(world: World) -> None:
    header = tar.encode_header(TarHeader(name="absurd", size=1 << 60))
    with pytest.raises(LayerError) as info:
        world.apply(header + bytes(512))
    assert "'absurd'" in str(info.value) and "exceeds" in str(info.value)
    assert not (world.root / "absurd").exists()


def test_truncated_gzip_stream(world: World) -> None:
    raw = layer(f("a", b"1"), f("payload.bin", os.urandom(2 << 20)), f("z", b"z"))
    blob = gz(raw)
    with pytest.raises(TruncatedLayer) as info:
        world.apply(blob[: len(blob) * 2 // 3])
    assert "gzip" in str(info.value) and "'payload.bin'" in str(info.value)


def test_garbage_instead_of_a_layer(world: World) -> None:
    with pytest.raises(LayerError, match="checksum"):
        world.apply(os.urandom(4096))
    with pytest.raises(LayerError, match="gzip"):
        world.apply(b"\x1f\x8b\x08" + os.urandom(4096))


# ---------------------------------------------------------------------------
# What must be preserved
# ---------------------------------------------------------------------------


def test_device_nodes(world: World) -> None:
    world.apply(
        layer(
            TarHeader(
                name="dev/null", typeflag=tar.CHRTYPE, devmajor=1, devminor=3, mode=0o620, gid=5
            ),
            TarHeader(name="dev/loop9", typeflag=tar.BLKTYPE, devmajor=7, devminor=9, mode=0o600),
            TarHeader(name="dev/fifo", typeflag=tar.FIFOTYPE, mode=0o640),
        )
    )
    null = (world.root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o620 and null.st_gid == 5
    loop = (world.root / "dev/loop9").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 9)
    assert stat.S_ISFIFO((world.root / "dev/fifo").lstat().st_mode)


def test_special_modes_and_owners_preserved(world: World) -> None:
    world.apply(
        layer(
            f("usr/bin/sudo", b"s", mode=0o4755, uid=0, gid=0),
            f("usr/bin/wall", b"w", mode=0o2755, uid=0, gid=5),
            f("usr/bin/mine", b"m", mode=0o6750, uid=1000, gid=1000),
            d("tmp/", mode=0o1777),
            sym("usr/bin/link", "sudo", uid=1000, gid=1000),
        )
    )
    sudo = (world.root / "usr/bin/sudo").stat()
    assert stat.S_IMODE(sudo.st_mode) == 0o4755
    mine = (world.root / "usr/bin/mine").stat()
    # chown clears setuid/setgid: the mode must have been applied after it.
    assert (stat.S_IMODE(mine.st_mode), mine.st_uid, mine.st_gid) == (0o6750, 1000, 1000)
    assert stat.S_IMODE((world.root / "usr/bin/wall").stat().st_mode) == 0o2755
    assert stat.S_IMODE((world.root / "tmp").stat().st_mode) == 0o1777
    link = (world.root / "usr/bin/link").lstat()
    assert (link.st_uid, link.st_gid) == (1000, 1000)


def test_xattrs_preserved(world: World) -> None:
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep
    result = world.apply(
        layer(
            f(
                "bin/ping",
                b"p",
                mode=0o755,
                uid=1000,
                pax=(
                    ("SCHILY.xattr.security.capability", cap),
                    ("SCHILY.xattr.user.comment", "héllo".encode()),
                ),
            ),
            d("dir/", pax=(("SCHILY.xattr.user.d", b"1"),)),
            d("fake-opaque/", pax=(("SCHILY.xattr.trusted.overlay.opaque", b"y"),)),
            sym("bin/l", "ping", pax=(("SCHILY.xattr.user.onlink", b"1"),)),
        )
    )
    ping = world.root / "bin/ping"
    assert os.getxattr(ping, "security.capability") == cap  # set after chown
    assert os.getxattr(ping, "user.comment") == "héllo".encode()
    assert os.getxattr(world.root / "dir", "user.d") == b"1"
    assert "trusted.overlay.opaque" not in os.listxattr(world.root / "fake-opaque")
    assert any("trusted.overlay.opaque" in w for w in result.warnings)


def test_overlay_apply_then_diff_round_trip(world: World) -> None:
    raw = layer(
        d("etc/", mode=0o755),
        f("etc/os-release", b"ID=test\n", mtime_ns=10**9),
        f("etc/.wh.motd"),
        d("var/cache/", mode=0o700),
        f("var/cache/.wh..wh..opq"),
        f("var/cache/new", b"n", mtime_ns=10**9),
    )
    world.apply(raw, "overlay")
    out = io.BytesIO()
    archive.write_diff(None, world.root, out, mode="overlay", compression="none")
    names = [h.name for h, _ in tar.read_all(out.getvalue())]
    assert names == [
        "etc/",
        "etc/.wh.motd",
        "etc/os-release",
        "var/",
        "var/cache/",
        "var/cache/.wh..wh..opq",
        "var/cache/new",
    ]
