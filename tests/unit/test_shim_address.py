"""The shim's flags and socket address rule (standard-library only ``start`` path)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pycontainerd.shim.address import (
    CONTAINERD_STATE,
    group_annotation,
    parse_flags,
    socket_address,
    socket_path,
    state_root,
)


def test_parse_flags_go_style() -> None:
    flags = parse_flags(
        ["-namespace", "ns", "--address=/a.sock", "-publish-binary", "/bin/c", "-id", "x",
         "-debug", "start"]
    )  # fmt: skip
    assert (flags.namespace, flags.address, flags.publish_binary, flags.id) == (
        "ns", "/a.sock", "/bin/c", "x",
    )  # fmt: skip
    assert flags.debug and flags.action == "start"


def test_parse_flags_rejects_unknown_and_missing_values() -> None:
    with pytest.raises(ValueError, match="not defined"):
        parse_flags(["-bogus", "1", "start"])
    with pytest.raises(ValueError, match="needs an argument"):
        parse_flags(["-id"])


def test_socket_address_is_containerds_hash() -> None:
    expected = hashlib.sha256(b"/run/containerd/containerd.sock/default/c1").hexdigest()
    address = socket_address("/run/containerd/containerd.sock", "default", "c1", "/run/containerd")
    assert address == f"unix:///run/containerd/s/{expected}"
    assert socket_path(address) == f"/run/containerd/s/{expected}"


def test_state_root(tmp_path: Path) -> None:
    bundle = "/var/st/io.containerd.runtime.v2.task/default/c1"
    # containerd 1.6 (no MAX_SHIM_VERSION) hard-codes /run/containerd.
    assert state_root(bundle, None) == CONTAINERD_STATE
    assert state_root(bundle, "2") == "/var/st"
    assert state_root("/elsewhere/c1", "2") == CONTAINERD_STATE
    assert state_root("/io.containerd.runtime.v2.task/ns/id", "2") == "/"
    long_state = "/" + "x" * 60 + "/io.containerd.runtime.v2.task/ns/id"
    assert state_root(long_state, "2") == CONTAINERD_STATE


def test_group_from_annotations(tmp_path: Path) -> None:
    assert group_annotation(str(tmp_path)) == ""  # no config.json
    spec: dict[str, object] = {"annotations": {"io.kubernetes.cri.sandbox-id": "pod"}}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    assert group_annotation(str(tmp_path)) == "pod"
    group = "io.containerd.runc.v2.group"
    spec["annotations"] = {"io.kubernetes.cri.sandbox-id": "pod", group: "g"}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    assert group_annotation(str(tmp_path)) == "g"
    for garbage in (f"[{group}]", f'{{"annotations": "{group}"}}', f"{group} {{"):
        (tmp_path / "config.json").write_text(garbage)
        assert group_annotation(str(tmp_path)) == ""
