"""Bundles: layout, permissions for user namespaces, atomic removal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pycontainerd.errdefs import InvalidArgument
from pycontainerd.runtime.v2 import bundle as bundlemod

SPEC = json.dumps({"ociVersion": "1.0.2", "process": {"args": ["true"]}}).encode()


def test_new_bundle_layout(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    b = bundlemod.new_bundle(root, state, "ns", "c1", SPEC)
    assert b.path == state / "ns" / "c1"
    assert (b.path / "config.json").read_bytes() == SPEC
    assert b.rootfs.is_dir()
    assert os.readlink(b.path / "work") == str(root / "ns" / "c1")
    assert (root / "ns" / "c1").is_dir()
    assert b.path.stat().st_mode & 0o777 == 0o700
    assert bundlemod.load_bundle(state, "ns", "c1") == b


def test_new_bundle_refuses_a_taken_id_and_keeps_it(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    bundlemod.new_bundle(root, state, "ns", "c1", SPEC)
    with pytest.raises(FileExistsError):
        bundlemod.new_bundle(root, state, "ns", "c1", SPEC)
    assert (state / "ns" / "c1" / "config.json").exists()


def test_new_bundle_validates_id_and_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="invalid task id"):
        bundlemod.new_bundle(tmp_path, tmp_path, "ns", "bad/id", SPEC)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        bundlemod.new_bundle(tmp_path, tmp_path, "ns", "c1", b"{")
    assert not (tmp_path / "ns" / "c1").exists()


def test_remapped_gid() -> None:
    spec = {"linux": {"gidMappings": [{"containerID": 0, "hostID": 1000, "size": 65536}]}}
    assert bundlemod.remapped_gid(json.dumps(spec).encode()) == 1000
    assert bundlemod.remapped_gid(SPEC) == 0


def test_user_namespace_bundle_is_group_accessible(tmp_path: Path) -> None:
    spec = {"linux": {"gidMappings": [{"containerID": 0, "hostID": 4321, "size": 1}]}}
    b = bundlemod.new_bundle(tmp_path / "r", tmp_path / "s", "ns", "c", json.dumps(spec).encode())
    st = b.path.stat()
    if os.geteuid() == 0:
        assert st.st_gid == 4321
    assert st.st_mode & 0o777 == 0o710


def test_delete_removes_bundle_and_work(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    b = bundlemod.new_bundle(root, state, "ns", "c1", SPEC)
    (b.path / "address").write_text("unix:///x")
    b.delete()
    assert not b.path.exists() and not (root / "ns" / "c1").exists()
    assert list((state / "ns").iterdir()) == []
    b.delete()  # twice is fine


def test_detach_moves_the_directories_aside_at_once(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    b = bundlemod.new_bundle(root, state, "ns", "c1", SPEC)
    (b.path / "address").write_text("unix:///x")
    detached = b.detach()
    assert not b.path.exists() and not (root / "ns" / "c1").exists()
    assert sorted(p.parent for p in detached) == [root / "ns", state / "ns"]
    assert all(p.name.startswith(".c1.") for p in detached)
    assert (next(p for p in detached if p.parent == state / "ns") / "address").exists()
    # The same id again, while the first copy is still there: no clash.
    again = bundlemod.new_bundle(root, state, "ns", "c1", SPEC).detach()
    assert not set(again) & set(detached)
    bundlemod.remove_detached(detached + again)
    assert list((state / "ns").iterdir()) == [] and list((root / "ns").iterdir()) == []
    assert b.detach() == []  # nothing left to move


def test_leftovers_of_an_interrupted_deletion_are_removed(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    bundlemod.new_bundle(root, state, "ns", "c1", SPEC).detach()  # a crash before removal
    live = bundlemod.new_bundle(root, state, "ns", "c2", SPEC)
    bundlemod.remove_leftovers(state / "ns")
    assert list((state / "ns").iterdir()) == [live.path]
    bundlemod.remove_leftovers(state / "nonexistent")
