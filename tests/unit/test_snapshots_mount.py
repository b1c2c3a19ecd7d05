"""Mount option handling and host probes, without mounting anything."""

from __future__ import annotations

import pytest

from pycontainerd.snapshots import _fs
from pycontainerd.snapshots.mount import (
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    ParsedOptions,
    compact_lowerdir,
    parse_mount_options,
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["rw", "rbind"], ParsedOptions(MS_BIND | MS_REC, "")),
        (["ro", "rbind"], ParsedOptions(MS_RDONLY | MS_BIND | MS_REC, "")),
        (["ro", "rw"], ParsedOptions(0, "")),  # later words win
        (["nosuid", "nodev", "suid"], ParsedOptions(MS_NODEV, "")),
        (["defaults"], ParsedOptions(0, "")),
        (["rprivate"], ParsedOptions(MS_PRIVATE | MS_REC, "")),
        (
            ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"],
            ParsedOptions(0, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b"),
        ),
        (["loop", "ro"], ParsedOptions(MS_RDONLY, "", loop=True)),
        (["nosuid", "size=10m", "mode=755"], ParsedOptions(MS_NOSUID, "size=10m,mode=755")),
    ],
)
def test_parse_mount_options(options: list[str], expected: ParsedOptions) -> None:
    assert parse_mount_options(options) == expected


def test_compact_lowerdir_relative_to_common_directory() -> None:
    lowers = ":".join(f"/var/lib/x/snapshots/{i}/fs" for i in (12, 11, 3))
    opts = ["index=off", "workdir=/var/lib/x/snapshots/13/work", f"lowerdir={lowers}", "ro"]
    directory, compacted = compact_lowerdir(opts)
    assert directory == "/var/lib/x/snapshots"
    # lowerdir moves to the end, as containerd's compaction leaves it.
    assert compacted == [
        "index=off",
        "workdir=/var/lib/x/snapshots/13/work",
        "ro",
        "lowerdir=12/fs:11/fs:3/fs",
    ]
    assert opts[2] == f"lowerdir={lowers}"  # the caller's list is not modified


@pytest.mark.parametrize(
    "opts",
    [
        ["workdir=/w", "upperdir=/u"],  # no lowerdir
        ["lowerdir=/a/b/fs"],  # one layer: nothing to share
        ["lowerdir=/a/fs:/b/fs"],  # only / in common
        ["lowerdir=a/fs:b/fs"],  # already relative
    ],
)
def test_compact_lowerdir_unchanged(opts: list[str]) -> None:
    assert compact_lowerdir(opts) == ("", opts)


def test_compact_lowerdir_never_yields_an_empty_layer() -> None:
    directory, compacted = compact_lowerdir(["lowerdir=/r/s/1:/r/s/1/fs"])
    assert directory == "/r/s"
    assert compacted == ["lowerdir=1:1/fs"]


def test_compaction_shrinks_deep_stacks_below_a_page() -> None:
    root = "/var/lib/pycontainerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
    lowers = ":".join(f"{root}/{i}/fs" for i in range(500, 372, -1))
    opts = [f"workdir={root}/501/work", f"upperdir={root}/501/fs", f"lowerdir={lowers}"]
    assert len(parse_mount_options(opts).data) > 4096
    _, compacted = compact_lowerdir(opts)
    assert len(parse_mount_options(compacted).data) < 4096 - 512


@pytest.mark.parametrize(
    ("uid_map", "nested"),
    [
        ("         0          0 4294967295\n", False),
        ("0 1000 1\n", True),
        ("0 100000 65536\n", True),
        ("0 0 4294967295\n1 2 3\n", True),
    ],
)
def test_uid_map_is_nested(uid_map: str, nested: bool) -> None:
    assert _fs.uid_map_is_nested(uid_map) is nested


def test_kernel_version_is_parsed() -> None:
    major, minor = _fs.kernel_version()
    assert major >= 3 and minor >= 0
