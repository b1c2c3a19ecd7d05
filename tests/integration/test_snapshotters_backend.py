"""The snapshotter conformance suite against overlayfs and native, with real mounts.

Each case gets a fresh snapshotter in its own temporary root. Whatever a case leaves
mounted under its directory is detached afterwards, and the test then fails: a case
must clean up its own mounts, even when it fails.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycontainerd.plugin.registry import SkipPlugin
from pycontainerd.snapshots import testsuite
from pycontainerd.snapshots.interface import Mount
from pycontainerd.snapshots.mount import MNT_DETACH, mounted, unmount
from pycontainerd.snapshots.native import NativeSnapshotter
from pycontainerd.snapshots.overlay import OverlaySnapshotter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="snapshotters need root to mount")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 4 <= len(field):
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


@pytest.fixture(params=["overlayfs", "native"])
async def subject(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[testsuite.Subject]:
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    sn: OverlaySnapshotter | NativeSnapshotter
    if request.param == "overlayfs":
        try:
            sn = await OverlaySnapshotter.open(root)
        except SkipPlugin as exc:
            pytest.skip(str(exc))
    else:
        sn = await NativeSnapshotter.open(root)
    try:
        yield testsuite.Subject(sn, work, root=root)
    finally:
        await sn.aclose()
        leftover = mounts_under(tmp_path)
        for point in leftover:
            unmount(point, MNT_DETACH)
        assert not leftover, f"the case left mounts behind: {leftover}"


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    await case.run(subject)


async def test_overlay_mount_options(tmp_path: Path) -> None:
    """Options as containerd builds them: binds for bases and one-layer views, overlay
    with the nearest parent first otherwise, index=off where the kernel knows it."""
    try:
        sn = await OverlaySnapshotter.open(tmp_path / "root", mount_options=("metacopy=off",))
    except SkipPlugin as exc:
        pytest.skip(str(exc))
    try:
        snaps = tmp_path.resolve() / "root" / "snapshots"
        assert await sn.prepare("a") == [
            Mount(type="bind", source=f"{snaps}/1/fs", options=("rw", "rbind"))
        ]
        await sn.commit("A", "a")
        assert await sn.view("v1", "A") == [
            Mount(type="bind", source=f"{snaps}/1/fs", options=("ro", "rbind"))
        ]
        [b] = await sn.prepare("b", "A")
        index = ("index=off",) if sn.index_off else ()
        assert b == Mount(
            type="overlay",
            source="overlay",
            options=(
                *index,
                "metacopy=off",
                f"workdir={snaps}/3/work",
                f"upperdir={snaps}/3/fs",
                f"lowerdir={snaps}/1/fs",
            ),
        )
        await sn.commit("B", "b")
        [v2] = await sn.view("v2", "B")
        assert v2.options == (*index, "metacopy=off", f"lowerdir={snaps}/3/fs:{snaps}/1/fs")
        assert sn.index_off == os.path.exists("/sys/module/overlay/parameters/index")
        assert not sn.userxattr  # the initial user namespace never needs it
    finally:
        await sn.aclose()


async def test_overlay_upperdir_label_and_deferred_removal(tmp_path: Path) -> None:
    try:
        sn = await OverlaySnapshotter.open(tmp_path / "root", upperdir_label=True)
    except SkipPlugin as exc:
        pytest.skip(str(exc))
    try:
        upper = tmp_path.resolve() / "root" / "snapshots" / "1" / "fs"
        await sn.prepare("a", labels={"x": "1"})
        label = "containerd.io/snapshot/overlay.upperdir"
        assert (await sn.stat("a")).labels == {"x": "1", label: str(upper)}
        assert [dict(i.labels) async for i in sn.walk()] == [{"x": "1", label: str(upper)}]
        await sn.remove("a")
        assert upper.exists()  # deletion waits for cleanup, as containerd's plugin sets it
        await sn.cleanup()
        assert not upper.parent.exists()
    finally:
        await sn.aclose()


async def test_overlay_sync_remove(tmp_path: Path) -> None:
    try:
        sn = await OverlaySnapshotter.open(tmp_path / "root", sync_remove=True)
    except SkipPlugin as exc:
        pytest.skip(str(exc))
    try:
        await sn.prepare("a")
        await sn.remove("a")
        assert os.listdir(tmp_path / "root" / "snapshots") == []
    finally:
        await sn.aclose()


async def test_native_copy_is_independent(tmp_path: Path) -> None:
    """Writing into a native child never changes its parent's files."""
    sn = await NativeSnapshotter.open(tmp_path / "root")
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        with mounted(await sn.prepare("a"), target):
            (target / "f").write_bytes(b"parent")
        await sn.commit("A", "a")
        with mounted(await sn.prepare("b", "A"), target):
            assert (target / "f").read_bytes() == b"parent"
            (target / "f").write_bytes(b"child")
        with mounted(await sn.view("v", "A"), target):
            assert (target / "f").read_bytes() == b"parent"
    finally:
        await sn.aclose()
