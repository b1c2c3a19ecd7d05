"""cgroups v1 metrics read from a fake cgroup tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycontainerd import errdefs
from pycontainerd.shim import metrics

CGROUP = "/default/web"


def _write(root: Path, controller: str, files: dict[str, str]) -> None:
    directory = root / controller / CGROUP.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    _write(
        tmp_path,
        "memory",
        {
            "memory.usage_in_bytes": "4096\n",
            "memory.limit_in_bytes": "9223372036854771712\n",
            "memory.max_usage_in_bytes": "8192\n",
            "memory.failcnt": "3\n",
            "memory.stat": "cache 100\nrss 200\nswap 5\npgfault 7\ntotal_cache 150\nunknown 1\n",
        },
    )
    _write(
        tmp_path,
        "cpu,cpuacct",
        {
            "cpuacct.usage": "123456\n",
            "cpuacct.usage_percpu": "100000 23456 \n",
            "cpuacct.stat": "user 2\nsystem 1\n",
            "cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 999\n",
        },
    )
    _write(tmp_path, "pids", {"pids.current": "1\n", "pids.max": "max\n"})
    _write(
        tmp_path,
        "blkio",
        {
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 512\n8:0 Write 0\nTotal 512\n",
            "blkio.throttle.io_serviced_recursive": "8:0 Read 1\nTotal 1\n",
        },
    )
    return tmp_path


PATHS = {c: CGROUP for c in ("memory", "cpu", "cpuacct", "pids", "blkio")}


def test_memory_fields(cgroup_root: Path) -> None:
    memory = metrics.collect(PATHS, cgroup_root).memory
    assert (memory.usage.usage, memory.usage.max, memory.usage.failcnt) == (4096, 8192, 3)
    assert memory.usage.limit == 9223372036854771712
    assert (memory.cache, memory.rss, memory.pg_fault, memory.total_cache) == (100, 200, 7, 150)


def test_cpu_fields_from_joined_mount(cgroup_root: Path) -> None:
    cpu = metrics.collect(PATHS, cgroup_root).cpu
    assert cpu.usage.total == 123456
    assert list(cpu.usage.per_cpu) == [100000, 23456]
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert (cpu.usage.user, cpu.usage.kernel) == (2 * tick, tick)
    assert (cpu.throttling.periods, cpu.throttling.throttled_periods) == (10, 2)
    assert cpu.throttling.throttled_time == 999


def test_pids_unlimited_is_zero(cgroup_root: Path) -> None:
    pids = metrics.collect(PATHS, cgroup_root).pids
    assert (pids.current, pids.limit) == (1, 0)


def test_blkio_skips_total_line(cgroup_root: Path) -> None:
    blkio = metrics.collect(PATHS, cgroup_root).blkio
    assert [(e.op, e.major, e.minor, e.value) for e in blkio.io_service_bytes_recursive] == [
        ("Read", 8, 0, 512),
        ("Write", 8, 0, 0),
    ]
    assert len(blkio.io_serviced_recursive) == 1


def test_missing_controller_is_left_unset(cgroup_root: Path) -> None:
    result = metrics.collect({"pids": CGROUP}, cgroup_root)
    assert result.HasField("pids")
    assert not result.HasField("memory")


def test_unified_hierarchy_is_not_implemented(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    with pytest.raises(errdefs.NotImplemented_, match="cgroup v2"):
        metrics.collect(PATHS, tmp_path)


def test_paths_of_pid(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(
        "12:pids:/default/web\n4:cpu,cpuacct:/default/web\n1:name=systemd:/x\n0::/\n"
    )
    paths = metrics.cgroup_paths_of_pid(42, proc_root=tmp_path)
    assert paths["cpu"] == paths["cpuacct"] == paths["pids"] == "/default/web"
    assert paths["systemd"] == "/x"
