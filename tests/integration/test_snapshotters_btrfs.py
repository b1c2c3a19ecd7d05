"""The btrfs snapshotter on a real btrfs: a 1 GiB sparse file, loop device, mount.

The file system is made once for the module; each case gets a fresh snapshotter in its
own directory on it, and its own work directory (off btrfs) for mounts. Whatever a case
leaves mounted is detached and the case fails, as in test_snapshotters_backend.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from pycontainerd.plugin import SkipPlugin
from pycontainerd.snapshots import _fs, testsuite
from pycontainerd.snapshots.btrfs import (
    BTRFS_SUPER_MAGIC,
    BtrfsSnapshotter,
    diff_usage,
    remove_tree,
    subvolume_id,
)
from pycontainerd.snapshots.interface import Mount
from pycontainerd.snapshots.mount import MNT_DETACH, mounted, unmount
from tests.integration.conftest import TEST_CONFIG, Ctr

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="btrfs needs root (loop, mount)")

MKFS = shutil.which("mkfs.btrfs")
BTRFS = shutil.which("btrfs")
LOSETUP = shutil.which("losetup")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below ``base``, most recent first."""
    prefix = str(base.resolve())
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return points[::-1]


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def btrfs_loop(base: Path) -> Iterator[tuple[Path, str]]:
    """A fresh btrfs on a loop device, mounted on ``base/mnt``: (mount point, device).

    Everything is undone on exit, also when setting up fails half way.
    """
    image, mnt = base / "btrfs.img", base / "mnt"
    mnt.mkdir()
    device = ""
    try:
        with open(image, "wb") as f:
            f.truncate(1 << 30)
        _run(str(MKFS), "-q", str(image))
        device = _run(str(LOSETUP), "-f", "--show", str(image)).strip()
        _run("mount", "-t", "btrfs", device, str(mnt))
        yield mnt, device
    finally:
        for point in mounts_under(base):
            unmount(point, MNT_DETACH)
        if device:
            subprocess.run([str(LOSETUP), "-d", device], check=False)
        image.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    missing = [
        n for n, p in (("mkfs.btrfs", MKFS), ("btrfs", BTRFS), ("losetup", LOSETUP)) if not p
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian's btrfs-progs, util-linux)")
    with open("/proc/filesystems") as f:
        if "btrfs" not in f.read():
            subprocess.run(["modprobe", "btrfs"], capture_output=True, check=False)
    with btrfs_loop(tmp_path_factory.mktemp("btrfs")) as found:
        yield found


_roots = itertools.count(1)


@contextlib.asynccontextmanager
async def opened(mnt: Path, tmp_path: Path) -> AsyncIterator[tuple[BtrfsSnapshotter, Path]]:
    """A fresh snapshotter in its own directory on the btrfs, and a work directory
    (holding an empty ``m`` to mount on).

    Afterwards the snapshotter is closed, its subvolumes deleted, and leftover mounts
    under ``tmp_path`` detached (failing the test).
    """
    root = mnt / f"case-{next(_roots)}"
    work = tmp_path / "work"
    (work / "m").mkdir(parents=True)  # a mount point for the btrfs tests
    sn = await BtrfsSnapshotter.open(root)
    try:
        yield sn, work
    finally:
        await sn.aclose()
        leftover = mounts_under(tmp_path)
        for point in leftover:
            unmount(point, MNT_DETACH)
        remove_tree(root)
        assert not leftover, f"the case left mounts behind: {leftover}"


@pytest.fixture
async def subject(btrfs: tuple[Path, str], tmp_path: Path) -> AsyncIterator[testsuite.Subject]:
    async with opened(btrfs[0], tmp_path) as (sn, work):
        # No root: the suite's layout cases expect everything in snapshots/<id>, where
        # btrfs keeps only committed snapshots; the btrfs tests below check its layout.
        yield testsuite.Subject(sn, work)


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    await case.run(subject)


def _property_ro(path: Path) -> bool:
    return _run(str(BTRFS), "property", "get", "-ts", str(path), "ro").strip() == "ro=true"


def _rootid(path: Path) -> int:
    return int(_run(str(BTRFS), "inspect-internal", "rootid", str(path)))


async def test_layout_and_mounts(btrfs: tuple[Path, str], tmp_path: Path) -> None:
    """containerd's layout and mounts: ``subvolid`` of the subvolume (checked against
    btrfs-progs), ``ro`` for views, the device as source; commit leaves a read-only
    subvolume in snapshots/ and none in active/."""
    mnt, device = btrfs
    async with opened(mnt, tmp_path) as (sn, work):
        root = sn.root
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        [a] = await sn.prepare("a")
        assert a == Mount(
            type="btrfs", source=device, options=(f"subvolid={_rootid(root / 'active/1')}",)
        )
        assert not _property_ro(root / "active/1")
        with mounted([a], work / "m"):
            (work / "m" / "f").write_text("hello")
        await sn.commit("A", "a")
        assert os.listdir(root / "active") == []
        assert os.listdir(root / "snapshots") == ["1"] and _property_ro(root / "snapshots/1")
        [v] = await sn.view("v", "A")
        assert v.options == (f"subvolid={_rootid(root / 'view/2')}", "ro")
        assert _property_ro(root / "view/2")
        [b] = await sn.prepare("b", "A")
        assert b.options == (f"subvolid={subvolume_id(root / 'active/3')}",)
        with mounted([b], work / "m"):
            assert (work / "m" / "f").read_text() == "hello"
            (work / "m" / "f").write_text("changed")
        with mounted([v], work / "m"):
            assert (work / "m" / "f").read_text() == "hello"
            with pytest.raises(OSError):
                (work / "m" / "g").write_text("no")
        [empty_view] = await sn.view("empty", "")
        assert empty_view.options[1:] == ("ro",)
        for key in ("v", "b", "empty", "A"):
            await sn.remove(key)
        for name in ("active", "view", "snapshots"):
            assert os.listdir(root / name) == []


async def test_usage_is_the_diff_from_the_parent(btrfs: tuple[Path, str], tmp_path: Path) -> None:
    """An active child counts only what it adds or changes (continuity's DiffUsage),
    not the parent's files it shares."""
    async with opened(btrfs[0], tmp_path) as (sn, work):
        m = work / "m"
        with mounted(await sn.prepare("a"), m):
            (m / "big").write_bytes(os.urandom(1 << 20))
            (m / "keep").write_bytes(os.urandom(64 << 10))
            (m / "d").mkdir()
        await sn.commit("A", "a")
        with mounted(await sn.prepare("b", "A"), m):
            (m / "d" / "new").write_bytes(os.urandom(128 << 10))
            os.chmod(m / "keep", 0o600)  # a changed mode makes the file count
        usage = await sn.usage("b")
        assert usage.inodes == 2
        assert (128 + 64) << 10 <= usage.size < 1 << 20
        await sn.commit("B", "b")
        assert await sn.usage("B") == usage


def test_diff_usage_pairs_only_directories(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in (lower, upper):
        d.mkdir()
        (d / "same").write_bytes(b"x" * 10000)
        os.utime(d / "same", ns=(1, 1_000_000_000))
    (lower / "was-file").write_bytes(b"f")
    (upper / "was-file").mkdir()
    (upper / "was-file" / "inside").write_bytes(b"y" * 10000)
    (upper / "hard").write_bytes(b"z" * 10000)
    os.link(upper / "hard", upper / "hard2")
    usage = diff_usage(lower, upper)
    # was-file (now a directory), inside, and hard/hard2 once.
    assert usage.inodes == 3


async def test_nested_subvolume_and_stale_leftovers(
    btrfs: tuple[Path, str], tmp_path: Path
) -> None:
    """A subvolume made inside a container's root does not stop removal; a leftover of
    a creation that never committed (its id is then reused) does not stop prepare."""
    async with opened(btrfs[0], tmp_path) as (sn, work):
        with mounted(await sn.prepare("a"), work / "m"):
            pass
        _run(str(BTRFS), "subvolume", "create", str(sn.root / "active/1/nested"))
        _run(str(BTRFS), "subvolume", "create", str(sn.root / "active/1/nested/deeper"))
        await sn.remove("a")
        assert os.listdir(sn.root / "active") == []
        # The next id is 2: plant what a crash inside its creation would leave.
        _run(str(BTRFS), "subvolume", "create", str(sn.root / "active/2"))
        (sn.root / "active/2/stale").write_text("old")
        with mounted(await sn.prepare("b"), work / "m"):
            assert os.listdir(work / "m") == []


async def test_cleanup_removes_orphans(btrfs: tuple[Path, str], tmp_path: Path) -> None:
    """Cleanup deletes what no snapshot of that kind owns, in all three directories,
    and keeps every live subvolume."""
    async with opened(btrfs[0], tmp_path) as (sn, work):
        root = sn.root
        await sn.prepare("kept-a")
        with mounted(await sn.mounts("kept-a"), work / "m"):
            (work / "m" / "keep").write_text("keep me")
        await sn.commit("kept", "kept-a")  # id 1
        await sn.prepare("kept-active", "kept")  # id 2
        await sn.view("kept-view", "kept")  # id 3
        subvolume = [str(BTRFS), "subvolume", "create"]
        _run(*subvolume, str(root / "active/999"))
        _run(*subvolume, str(root / "active/1"))  # the committed id, in the wrong place
        _run(
            str(BTRFS),
            "subvolume",
            "snapshot",
            "-r",
            str(root / "active/2"),
            str(root / "snapshots/2"),
        )
        (root / "view/plain/sub").mkdir(parents=True)
        _run(*subvolume, str(root / "view/plain/sub/inner"))
        (root / "snapshots/rm-7").write_text("junk")
        await sn.cleanup()
        assert os.listdir(root / "active") == ["2"]
        assert os.listdir(root / "view") == ["3"]
        assert os.listdir(root / "snapshots") == ["1"]
        with mounted(await sn.mounts("kept-active"), work / "m"):
            assert (work / "m" / "keep").read_text() == "keep me"
        await sn.cleanup()
        assert sorted(os.listdir(root / "active") + os.listdir(root / "view")) == ["2", "3"]


async def test_failed_create_leaves_nothing(btrfs: tuple[Path, str], tmp_path: Path) -> None:
    async with opened(btrfs[0], tmp_path) as (sn, _):
        await sn.prepare("taken")
        before = {d: os.listdir(sn.root / d) for d in ("active", "view", "snapshots")}
        for call, kind in [
            (sn.prepare("taken"), AlreadyExists),
            (sn.view("taken"), AlreadyExists),
            (sn.prepare("x", "missing"), NotFound),
            (sn.prepare("x", "taken"), InvalidArgument),
        ]:
            with pytest.raises(kind):
                await call
        after = {d: os.listdir(sn.root / d) for d in ("active", "view", "snapshots")}
        assert after == before == {"active": ["1"], "view": [], "snapshots": []}


async def test_open_on_another_file_system_skips(tmp_path: Path) -> None:
    """containerd's message, with the file system's name; the registry's ': skip
    plugin' suffix makes ``ctr plugins ls`` print ``skip``."""
    fs = tmp_path / "tmpfs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(fs)], check=True)
    try:
        root = fs / "root"
        with pytest.raises(SkipPlugin) as caught:
            await BtrfsSnapshotter.open(root)
        assert caught.value.message == (
            f"path {root} (tmpfs) must be a btrfs filesystem to be used with the btrfs snapshotter"
        )
        assert str(caught.value).endswith(": skip plugin")
    finally:
        unmount(fs, MNT_DETACH)


def _daemon_config(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        TEST_CONFIG + f'[plugins."io.containerd.snapshotter.v1.btrfs"]\nroot_path = "{root}"\n'
    )
    return config


def test_ctr_snapshots_on_btrfs(btrfs: tuple[Path, str], tmp_path: Path) -> None:
    mnt, device = btrfs
    base = tmp_path / "daemon"
    base.mkdir()
    config = _daemon_config(tmp_path, mnt / "daemon-root")
    try:
        with harness.pycontainerd(base, "--config", str(config)) as d:
            ctr = Ctr(d.address)
            rows = [r.split() for r in ctr("plugins", "ls").stdout.splitlines()[1:]]
            assert ["io.containerd.snapshotter.v1", "btrfs", "linux/amd64", "ok"] in rows
            s = ("snapshots", "--snapshotter", "btrfs")
            ctr(*s, "prepare", "base-active")
            target = tmp_path / "m"
            out = ctr(*s, "mounts", str(target), "base-active").stdout
            assert out.startswith(f"mount -t btrfs {device} {target} -o subvolid=")
            target.mkdir()
            subprocess.run(out, shell=True, check=True)
            try:
                (target / "hello").write_bytes(os.urandom(256 << 10))
            finally:
                subprocess.run(["umount", str(target)], check=True)
            ctr(*s, "commit", "base", "base-active")
            ctr(*s, "prepare", "child", "base")
            ctr(*s, "view", "child-view", "base")
            out = ctr(*s, "mounts", str(target), "child-view").stdout
            assert out.rstrip().endswith(",ro")
            rows = [r.split() for r in ctr(*s, "ls").stdout.splitlines()]
            assert rows[0] == ["KEY", "PARENT", "KIND"]
            assert sorted(tuple(r) for r in rows[1:]) == [
                ("base", "Committed"),
                ("child", "base", "Active"),
                ("child-view", "base", "View"),
            ]
            info = ctr(*s, "info", "base").stdout
            assert '"Kind": "Committed"' in info and '"Name": "base"' in info
            usage = ctr(*s, "usage", "base").stdout.splitlines()
            assert usage[0].split()[:3] == ["KEY", "SIZE", "INODES"]
            # "base  256.0 KiB  2": the file and the subvolume's root directory.
            assert usage[1].split() == ["base", "256.0", "KiB", "2"]
            # The backend's layout; removals reach it at the next garbage collection.
            backend = mnt / "daemon-root"
            layout = [os.listdir(backend / n) for n in ("snapshots", "active", "view")]
            assert layout == [["1"], ["2"], ["3"]]
            res = ctr(*s, "rm", "base", check=False)
            assert res.returncode != 0 and "cannot remove snapshot with child" in res.stderr
            ctr(*s, "rm", "child", "child-view")
            ctr(*s, "rm", "base")
            assert ctr(*s, "ls").stdout.splitlines()[1:] == []
    finally:
        remove_tree(mnt / "daemon-root")


def test_plugins_ls_shows_skip_off_btrfs(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(TEST_CONFIG)
    with harness.pycontainerd(tmp_path, "--config", str(config)) as d:
        if _fs.filesystem_type(d.root) == BTRFS_SUPER_MAGIC:
            pytest.skip("the daemon's root is itself on btrfs")
        ctr = Ctr(d.address)
        rows = [r.split() for r in ctr("plugins", "ls").stdout.splitlines()[1:]]
        assert ["io.containerd.snapshotter.v1", "btrfs", "linux/amd64", "skip"] in rows
        detail = " ".join(ctr("plugins", "ls", "-d", "id==btrfs").stdout.split())
        assert "must be a btrfs filesystem to be used with the btrfs snapshotter" in detail
        # The other snapshotters are unaffected.
        res = ctr("snapshots", "--snapshotter", "btrfs", "ls", check=False)
        assert res.returncode != 0 and "snapshotter not loaded: btrfs" in res.stderr
