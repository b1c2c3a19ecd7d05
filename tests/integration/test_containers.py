"""Containers with Debian's Go ``ctr``: create, list, label, info, delete, GC, namespaces,
and ``ctr containers info`` compared with Debian's containerd for the same commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pycontainerd.images import build
from tests.integration.conftest import Ctr

IMAGE = "example.com/test/busybox:1"


def _import_busybox(ctr: Ctr, tmp_path: Path, name: str = "busybox.tar") -> None:
    archive = tmp_path / name
    if not archive.exists():
        build.write_oci_archive(build.make_image(build.busybox_files()), archive, IMAGE)
    ctr("images", "import", str(archive), timeout=300)


def _rows(ctr: Ctr, *args: str) -> list[list[str]]:
    return [line.split() for line in ctr("containers", "ls", *args).stdout.splitlines()[1:]]


def _snapshot_keys(ctr: Ctr) -> set[str]:
    return {line.split()[0] for line in ctr("snapshots", "ls").stdout.splitlines()[1:]}


def _collect(ctr: Ctr) -> None:
    # Deleting a lease with --sync runs a collection and waits for it.
    lease = ctr("leases", "create").stdout.strip()
    ctr("leases", "rm", "--sync", lease)


def test_create_list_label_info_remove(ctr: Ctr, tmp_path: Path) -> None:
    _import_busybox(ctr, tmp_path)
    ctr("containers", "create", "--label", "team=a", IMAGE, "c1")
    ctr("containers", "create", IMAGE, "c2")
    assert _rows(ctr) == [
        ["c1", IMAGE, "io.containerd.runc.v2"],
        ["c2", IMAGE, "io.containerd.runc.v2"],
    ]
    # ctr lists through ListStream, with filters evaluated by the daemon
    assert [r[0] for r in _rows(ctr, "labels.team==a")] == ["c1"]
    assert [r[0] for r in _rows(ctr, "id==c2")] == ["c2"]

    out = ctr("containers", "label", "c1", "x=y").stdout
    assert "x=y" in out and "team=a" in out
    ctr("containers", "label", "c1", "team=")
    info = json.loads(ctr("containers", "info", "c1").stdout)
    assert info["ID"] == "c1" and info["Image"] == IMAGE
    assert info["Labels"]["x"] == "y" and "team" not in info["Labels"]
    assert info["Snapshotter"] == "overlayfs" and info["SnapshotKey"] == "c1"
    assert info["Runtime"]["Name"] == "io.containerd.runc.v2"
    assert info["Spec"]["process"]["args"] == ["/bin/sh"]

    res = ctr("containers", "create", "--rootfs", str(tmp_path), "c1", check=False)
    assert res.returncode != 0 and 'container "c1": already exists' in res.stderr

    ctr("containers", "rm", "c1", "c2")
    assert _rows(ctr) == []
    res = ctr("containers", "info", "c1", check=False)
    assert res.returncode != 0 and "not found" in res.stderr


def test_gc_keeps_container_snapshot_until_container_goes(ctr: Ctr, tmp_path: Path) -> None:
    _import_busybox(ctr, tmp_path)
    ctr("containers", "create", IMAGE, "kept")
    _collect(ctr)
    assert "kept" in _snapshot_keys(ctr)
    ctr("containers", "rm", "--keep-snapshot", "kept")
    assert "kept" in _snapshot_keys(ctr)  # nothing collected yet
    _collect(ctr)
    keys = _snapshot_keys(ctr)
    assert "kept" not in keys and len(keys) == 1  # the image's layer stays


def test_namespace_holding_a_container_cannot_be_removed(ctr: Ctr, tmp_path: Path) -> None:
    ctr("containers", "create", "--rootfs", str(tmp_path), "only", namespace="held")
    res = ctr("namespaces", "rm", "held", check=False)
    assert res.returncode != 0
    assert 'namespace "held" must be empty, but it still has containers' in res.stderr
    ctr("containers", "rm", "only", namespace="held")
    ctr("namespaces", "rm", "held")


def _comparable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("CreatedAt", "UpdatedAt")}


def test_matches_containerd(ctr: Ctr, reference: Ctr, tmp_path: Path) -> None:
    for target in (ctr, reference):
        _import_busybox(target, tmp_path)
        target("containers", "create", "--label", "a=b", IMAGE, "same")
        target("containers", "label", "same", "x=y")
        target("containers", "create", "--rootfs", str(tmp_path), "bare", namespace="other")
    for cid, ns in (("same", None), ("bare", "other")):
        ours = json.loads(ctr("containers", "info", cid, namespace=ns).stdout)
        theirs = json.loads(reference("containers", "info", cid, namespace=ns).stdout)
        assert _comparable(ours) == _comparable(theirs)
        assert ours["CreatedAt"] != "0001-01-01T00:00:00Z"
    assert _rows(ctr) == _rows(reference)

    def failure(target: Ctr, *args: str, namespace: str | None = None) -> str:
        res = target(*args, namespace=namespace, check=False)
        assert res.returncode != 0
        return res.stderr

    for args, ns in (
        (("containers", "create", "--rootfs", str(tmp_path), "same"), None),
        (("containers", "info", "nope"), None),
        (("containers", "rm", "nope"), None),
        (("containers", "rm", "nope"), "empty"),
        (("containers", "label", "nope", "a=b"), None),
        (("namespaces", "rm", "other"), None),
    ):
        assert failure(ctr, *args, namespace=ns) == failure(reference, *args, namespace=ns)
