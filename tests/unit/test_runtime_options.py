"""Default runc options from the runtime config, merged under a task's own."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from pycontainerd._api.containerd.types.runc.options import oci_pb2
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.runtime.v2.options import RUNC_OPTIONS_TYPE, merge, runc_options
from pycontainerd.typeurl import marshal_any

WHERE = 'plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2".options'


def _options(value: any_pb2.Any) -> oci_pb2.Options:
    assert value.type_url == RUNC_OPTIONS_TYPE
    return oci_pb2.Options.FromString(value.value)


def test_go_names_and_proto_names() -> None:
    value = runc_options(
        {"BinaryName": "/usr/bin/crun", "SystemdCgroup": True, "IoUid": 5, "no_pivot_root": True},
        WHERE,
    )
    got = _options(value)
    assert got.binary_name == "/usr/bin/crun"
    assert got.systemd_cgroup and got.no_pivot_root
    assert got.io_uid == 5


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"BinaryNme": "x"}, "BinaryNme: unknown runc option"),
        ({"BinaryName": 7}, "BinaryName: expected a str, got 7"),
        ({"SystemdCgroup": "yes"}, "SystemdCgroup: expected a bool"),
        ({"IoUid": -1}, "IoUid: expected a int, got -1"),
        ({"IoUid": True}, "IoUid: expected a int, got True"),
    ],
)
def test_bad_table_names_the_key(table: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        runc_options(table, WHERE)
    assert f"{WHERE}.{words}" in str(info.value)


def test_merge_task_fields_win() -> None:
    default = runc_options({"BinaryName": "/fake-crun", "Root": "/run/x"}, WHERE)
    # what ctr run sends for io.containerd.runc.v2: empty options, or --runc-binary
    empty = marshal_any(oci_pb2.Options())
    assert _options(merge(default, empty) or empty).binary_name == "/fake-crun"
    chosen = marshal_any(oci_pb2.Options(binary_name="/usr/sbin/runc"))
    merged = _options(merge(default, chosen) or empty)
    assert (merged.binary_name, merged.root) == ("/usr/sbin/runc", "/run/x")


def test_merge_without_one_side_or_foreign_type() -> None:
    default = runc_options({"BinaryName": "/fake-crun"}, WHERE)
    assert merge(None, None) is None
    assert merge(default, None) == default
    assert merge(None, default) == default
    foreign = any_pb2.Any(type_url="example.com/Other", value=b"\x01")
    assert merge(default, foreign) == foreign


def test_merge_refuses_broken_runc_options() -> None:
    default = runc_options({"BinaryName": "/fake-crun"}, WHERE)
    broken = any_pb2.Any(type_url=RUNC_OPTIONS_TYPE, value=b"\xff\xff")
    with pytest.raises(InvalidArgument, match="invalid runc options"):
        merge(default, broken)
