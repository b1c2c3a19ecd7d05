"""Snapshotters, the snapshots service and the diff service, driven by Go ctr; pulled
images compared with what Debian's containerd makes of the same image."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.images import build
from tests.integration.conftest import CTR, TEST_CONFIG, Ctr
from tests.integration.registry import REGISTRY, Registry, run_registry

File = build.File


def three_layers() -> list[dict[str, build.File]]:
    base = build.busybox_files()
    base.update(
        {
            "data": File(mode=0o755, directory=True),
            "data/a": File(b"alpha\n"),
            "data/b": File(b"bravo\n", mode=0o600),
            "data/keep": File(mode=0o755, directory=True),
            "data/keep/x": File(b"x\n"),
            "opq": File(mode=0o755, directory=True),
            "opq/y": File(b"y\n"),
            "opq/z": File(b"z\n"),
            "suid": File(b"#!/bin/sh\n", mode=0o4755),
            "link": File(link="data/a"),
        }
    )
    second = {
        "data": File(mode=0o755, directory=True),
        "data/.wh.a": File(),
        "data/c": File(b"charlie\n", mode=0o640),
        "opq": File(mode=0o755, directory=True),
        "opq/.wh..wh..opq": File(),
        "opq/new": File(b"new\n"),
    }
    third = {
        "data": File(mode=0o755, directory=True),
        "data/b": File(b"bravo two\n", mode=0o644),
        "data/.wh.keep": File(),
        "sticky": File(mode=0o1777, directory=True),
    }
    return [base, second, third]


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root with type, mode, owner, size, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                extra: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = p.read_bytes()
            else:
                extra = None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if stat.S_ISREG(st.st_mode) else 0,
                extra,
            )
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_snapshot_commands(ctr: Ctr, snapshotter: str, tmp_path: Path) -> None:
    s = ("snapshots", "--snapshotter", snapshotter)
    mounts = ctr(*s, "prepare", "base-active").stdout
    assert mounts == ""  # ctr prints nothing for prepare without --mounts
    out = ctr(*s, "mounts", str(tmp_path / "m"), "base-active").stdout
    assert out.startswith("mount -t ")
    (tmp_path / "m").mkdir()
    subprocess.run(out, shell=True, check=True, cwd=tmp_path)
    try:
        (tmp_path / "m" / "hello").write_text("hi\n")
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
    ctr(*s, "commit", "base", "base-active")
    ctr(*s, "prepare", "child", "base")
    ctr(*s, "view", "child-view", "base")
    ctr(*s, "label", "base", "team=a")
    rows = [r.split() for r in ctr(*s, "ls").stdout.splitlines()]
    assert rows[0] == ["KEY", "PARENT", "KIND"]
    assert sorted(tuple(r) for r in rows[1:]) == [
        ("base", "Committed"),
        ("child", "base", "Active"),
        ("child-view", "base", "View"),
    ]
    info = ctr(*s, "info", "base").stdout
    assert '"Kind": "Committed"' in info and '"team": "a"' in info
    usage = ctr(*s, "usage", "base").stdout.splitlines()
    assert usage[0].split()[:3] == ["KEY", "SIZE", "INODES"] and usage[1].split()[0] == "base"
    assert "base" in ctr(*s, "tree").stdout
    res = ctr(*s, "rm", "base", check=False)
    assert res.returncode != 0 and "cannot remove snapshot with child" in res.stderr
    ctr(*s, "rm", "child", "child-view")
    ctr(*s, "rm", "base")
    assert ctr(*s, "ls").stdout.splitlines()[1:] == []
    res = ctr(*s, "info", "nope", check=False)
    assert res.returncode != 0 and "not found" in res.stderr


def test_unknown_snapshotter(ctr: Ctr) -> None:
    res = ctr("snapshots", "--snapshotter", "zfs", "ls", check=False)
    assert res.returncode != 0 and "snapshotter not loaded: zfs" in res.stderr


def test_snapshot_diff_round_trips(ctr: Ctr, tmp_path: Path) -> None:
    s = ("snapshots", "--snapshotter", "overlayfs")
    ctr(*s, "prepare", "a-active")
    ctr(*s, "commit", "a", "a-active")
    ctr(*s, "prepare", "b", "a")
    line = ctr(*s, "mounts", str(tmp_path / "m"), "b").stdout
    (tmp_path / "m").mkdir()
    subprocess.run(line, shell=True, check=True)
    try:
        (tmp_path / "m" / "file").write_text("content\n")
        os.mkdir(tmp_path / "m" / "dir")
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
    # ctr writes the layer blob it made to stdout
    blob = subprocess.run(
        [str(CTR), "-a", str(ctr.address), "snapshots", "diff", "a", "b"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = {m.name.rstrip("/") for m in tar.getmembers()}
        assert {"file", "dir"} <= names
        f = tar.extractfile("file")
        assert f is not None and f.read() == b"content\n"


def _push_reference_image(reference: Ctr, registry: Registry, tmp_path: Path) -> str:
    ref = f"{registry.host}/test/three:v1"
    archive = tmp_path / "three.tar"
    build.write_oci_archive(build.make_image(three_layers()), archive, ref)
    reference("images", "import", "--no-unpack", str(archive))
    reference("images", "push", "--plain-http", ref)
    return ref


def test_pull_and_mount_matches_containerd(
    ctr: Ctr, reference: Ctr, registry: Registry, tmp_path: Path
) -> None:
    ref = _push_reference_image(reference, registry, tmp_path)
    ctr("images", "pull", "--plain-http", ref, timeout=300)
    reference("images", "pull", "--plain-http", ref, timeout=300)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    ctr("images", "mount", ref, str(ours))
    try:
        reference("images", "mount", ref, str(theirs))
        try:
            mine, ref_tree = tree(ours), tree(theirs)
        finally:
            reference("images", "unmount", "--rm", str(theirs))
    finally:
        ctr("images", "unmount", "--rm", str(ours))
    assert mine == ref_tree
    assert "data/a" not in mine and "data/keep" not in mine
    assert "opq/new" in mine and "opq/y" not in mine
    assert mine["suid"][1] == 0o4755 and mine["data/b"][-1] == b"bravo two\n"
    # the image's snapshots survive a collection; removing the image lets them go
    lease = ctr("leases", "create").stdout.strip()
    ctr("leases", "rm", "--sync", lease)
    assert len(ctr("snapshots", "ls").stdout.splitlines()) == 4
    ctr("images", "rm", "--sync", ref)
    assert ctr("snapshots", "ls").stdout.splitlines()[1:] == []


def test_namespace_with_snapshots_cannot_be_removed(ctr: Ctr) -> None:
    ctr("snapshots", "prepare", "x", namespace="held")
    res = ctr("namespaces", "rm", "held", check=False)
    assert 'still has snapshots on "overlayfs" snapshotter' in res.stderr


def test_daemon_restart_keeps_snapshots(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(TEST_CONFIG)
    with harness.pycontainerd(tmp_path, "--config", str(config)) as d:
        Ctr(d.address)("snapshots", "prepare", "keep")
        Ctr(d.address)("snapshots", "commit", "kept", "keep")
        # what holds it across the restart's collection
        Ctr(d.address)("snapshots", "label", "kept", "containerd.io/gc.root=yes")
    with harness.pycontainerd(tmp_path) as d:
        rows = Ctr(d.address)("snapshots", "ls").stdout.splitlines()[1:]
        assert [r.split() for r in rows] == [["kept", "Committed"]]
