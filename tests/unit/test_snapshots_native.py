"""The native snapshotter without mounts: the conformance cases that need none, and the
tree copy and disk usage it is built on. No root needed."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycontainerd.errdefs import NotFound
from pycontainerd.snapshots import _fs, testsuite
from pycontainerd.snapshots.native import NativeSnapshotter


@pytest.fixture
async def subject(tmp_path: Path) -> AsyncIterator[testsuite.Subject]:
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    sn = await NativeSnapshotter.open(root)
    try:
        yield testsuite.Subject(sn, work, root=root, can_mount=False)
    finally:
        await sn.aclose()


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance_without_mounts(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    await case.run(subject)


async def test_layout_and_mounts(tmp_path: Path) -> None:
    sn = await NativeSnapshotter.open(tmp_path / "root")
    try:
        snaps = (tmp_path / "root" / "snapshots").absolute()
        [m] = await sn.prepare("a")
        assert (m.type, m.source, m.options) == ("bind", f"{snaps}/1", ("rbind", "rw"))
        assert stat.S_IMODE(os.stat(snaps / "1").st_mode) == 0o755
        (snaps / "1" / "file").write_bytes(b"data")
        await sn.commit("A", "a")
        [m] = await sn.view("v", "A")
        assert (m.source, m.options) == (f"{snaps}/1", ("rbind", "ro"))  # views copy nothing
        [m] = await sn.prepare("b", "A")
        assert (m.source, m.options) == (f"{snaps}/3", ("rbind", "rw"))
        assert (snaps / "3" / "file").read_bytes() == b"data"
        assert sorted(os.listdir(snaps)) == ["1", "3"]
        await sn.remove("b")
        assert sorted(os.listdir(snaps)) == ["1"]  # removed at once, not at cleanup
    finally:
        await sn.aclose()


async def test_parent_removed_during_copy_reports_not_found(tmp_path: Path) -> None:
    """A copy that fails because its parent vanished says the parent is missing."""
    sn = await NativeSnapshotter.open(tmp_path / "root")
    try:
        await sn.prepare("a")
        await sn.commit("A", "a")
        snaps = tmp_path / "root" / "snapshots"
        original_fill = sn._fill

        def fill_after_removal(td: Path, parent: tuple[str, ...]) -> None:
            # The parent's record and directory go between the check and the copy.
            conn = sn._ms._conn
            conn.execute("DELETE FROM snapshots WHERE key = 'A'")
            _fs.remove_all(snaps / parent[0])
            original_fill(td, parent)

        sn._fill = fill_after_removal  # type: ignore[method-assign]
        with pytest.raises(NotFound, match="missing parent"):
            await sn.prepare("b", "A")
        assert os.listdir(snaps) == []  # the half-made copy is gone too
    finally:
        await sn.aclose()


def _make_tree(src: Path) -> None:
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "file").write_bytes(b"x" * 5000)
    os.chmod(src / "d" / "file", 0o640)
    os.link(src / "d" / "file", src / "hard")
    os.symlink("d/file", src / "sym")
    os.symlink("/does/not/exist", src / "dangling")
    os.mkfifo(src / "fifo", 0o600)
    os.setxattr(src / "d" / "file", "user.note", b"hello")
    os.utime(src / "d" / "file", ns=(1_000_000_000, 2_000_000_000))
    os.utime(src / "sym", ns=(3_000_000_000, 4_000_000_000), follow_symlinks=False)
    os.chmod(src / "d" / "e", 0o500)  # read-only directory: its contents still copy
    os.utime(src / "d", ns=(5_000_000_000, 6_000_000_000))


def test_copy_dir_preserves_everything(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _make_tree(src)
    os.chmod(src, 0o751)
    _fs.copy_dir(src, dst)
    testsuite.check_directory_equal(src, dst, times=True)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o751
    assert os.stat(dst / "d").st_mtime_ns == 6_000_000_000  # set after its children
    assert os.stat(dst / "hard").st_ino == os.stat(dst / "d" / "file").st_ino
    assert os.getxattr(dst / "d" / "file", "user.note") == b"hello"
    assert os.readlink(dst / "sym") == "d/file"
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)


def test_copy_dir_rejects_non_directories(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        _fs.copy_dir(tmp_path / "f", tmp_path / "out")
    (tmp_path / "src").mkdir()
    with pytest.raises(NotADirectoryError):
        _fs.copy_dir(tmp_path / "src", tmp_path / "f")


def test_disk_usage_counts_blocks_and_inodes_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(b"x" * 10000)
    os.link(root / "a", root / "b")
    (root / "sub").mkdir()
    usage = _fs.disk_usage(root)
    expected = sum(os.lstat(p).st_blocks * 512 for p in (root, root / "a", root / "sub"))
    assert usage.inodes == 3
    assert usage.size == expected
    assert usage.size >= 10000


def test_remove_all_tolerates_missing(tmp_path: Path) -> None:
    _fs.remove_all(tmp_path / "missing")
    (tmp_path / "d" / "e").mkdir(parents=True)
    _fs.remove_all(tmp_path / "d")
    assert not (tmp_path / "d").exists()
