"""cgroups v1 task metrics for the shim's Stats (io.containerd.cgroups.v1.Metrics).

Imported lazily by the shim's Stats so that shim start-up stays light. Reads the
same files as containerd's cgroups v1 stats: memory, cpuacct/cpu, pids, blkio.
A controller that is not mounted or whose files are missing is left unset.
"""

from __future__ import annotations

import os
from pathlib import Path

from pycontainerd import errdefs
from pycontainerd._api.containerd.cgroups.v1 import metrics_pb2 as v1

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = "max"


def cgroup_paths_of_pid(pid: int, proc_root: Path = Path("/proc")) -> dict[str, str]:
    """Controller name -> cgroup path (relative to its hierarchy) from /proc/<pid>/cgroup."""
    paths: dict[str, str] = {}
    for line in (proc_root / str(pid) / "cgroup").read_text().splitlines():
        _hierarchy, controllers, path = line.split(":", 2)
        if not controllers:
            # "0::/path" is the unified (v2) hierarchy.
            paths[""] = path
            continue
        for controller in controllers.split(","):
            paths[controller.removeprefix("name=")] = path
    return paths


def is_unified(cgroup_root: Path = CGROUP_ROOT) -> bool:
    return (cgroup_root / "cgroup.controllers").exists()


def _read_uint(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if text == _UNLIMITED:
        return 0
    return int(text)


def _read_flat_keyed(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    values: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value:
            values[key] = int(value)
    return values


def _controller_dir(cgroup_root: Path, controller: str, path: str) -> Path | None:
    """The v1 hierarchy dir for a controller, trying the comma-joined mount names too."""
    relative = path.lstrip("/")
    for candidate in (controller, "cpu,cpuacct", "cpuacct,cpu"):
        if candidate != controller and controller not in ("cpu", "cpuacct"):
            continue
        directory = cgroup_root / candidate / relative
        if directory.is_dir():
            return directory
    return None


def _memory_entry(directory: Path, prefix: str) -> v1.MemoryEntry | None:
    usage = _read_uint(directory / f"{prefix}.usage_in_bytes")
    if usage is None:
        return None
    return v1.MemoryEntry(
        usage=usage,
        limit=_read_uint(directory / f"{prefix}.limit_in_bytes") or 0,
        max=_read_uint(directory / f"{prefix}.max_usage_in_bytes") or 0,
        failcnt=_read_uint(directory / f"{prefix}.failcnt") or 0,
    )


def memory_stat(directory: Path) -> v1.MemoryStat:
    stat = _read_flat_keyed(directory / "memory.stat")
    # memory.stat keys match the message's field names except for the paging counters.
    renamed = {
        "pgpgin": "pg_pg_in",
        "pgpgout": "pg_pg_out",
        "pgfault": "pg_fault",
        "pgmajfault": "pg_maj_fault",
        "total_pgpgin": "total_pg_pg_in",
        "total_pgpgout": "total_pg_pg_out",
        "total_pgfault": "total_pg_fault",
        "total_pgmajfault": "total_pg_maj_fault",
    }
    # Only the scalar counters: memory.stat's "swap" must not land on the swap entry.
    fields = {field.name for field in v1.MemoryStat.DESCRIPTOR.fields if field.message_type is None}
    memory = v1.MemoryStat()
    for key, value in stat.items():
        name = renamed.get(key, key)
        if name in fields:
            setattr(memory, name, value)
    for field, prefix in (
        ("usage", "memory"),
        ("swap", "memory.memsw"),
        ("kernel", "memory.kmem"),
        ("kernel_tcp", "memory.kmem.tcp"),
    ):
        entry = _memory_entry(directory, prefix)
        if entry is not None:
            getattr(memory, field).CopyFrom(entry)
    return memory


def cpu_stat(cpuacct_dir: Path, cpu_dir: Path | None) -> v1.CPUStat:
    cpu = v1.CPUStat()
    cpu.usage.total = _read_uint(cpuacct_dir / "cpuacct.usage") or 0
    try:
        per_cpu = (cpuacct_dir / "cpuacct.usage_percpu").read_text().split()
    except FileNotFoundError:
        per_cpu = []
    cpu.usage.per_cpu.extend(int(value) for value in per_cpu)
    # cpuacct.stat is in USER_HZ ticks; the message wants nanoseconds.
    ticks = _read_flat_keyed(cpuacct_dir / "cpuacct.stat")
    nanoseconds_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    cpu.usage.user = ticks.get("user", 0) * nanoseconds_per_tick
    cpu.usage.kernel = ticks.get("system", 0) * nanoseconds_per_tick
    if cpu_dir is not None:
        throttling = _read_flat_keyed(cpu_dir / "cpu.stat")
        cpu.throttling.periods = throttling.get("nr_periods", 0)
        cpu.throttling.throttled_periods = throttling.get("nr_throttled", 0)
        cpu.throttling.throttled_time = throttling.get("throttled_time", 0)
    return cpu


def _blkio_entries(path: Path) -> list[v1.BlkIOEntry]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        parts = line.split()
        # "Total N" summary lines carry no device.
        if len(parts) != 3:
            continue
        device, op, value = parts
        major, _, minor = device.partition(":")
        entries.append(v1.BlkIOEntry(op=op, major=int(major), minor=int(minor), value=int(value)))
    return entries


def blkio_stat(directory: Path) -> v1.BlkIOStat:
    blkio = v1.BlkIOStat()
    blkio.io_service_bytes_recursive.extend(
        _blkio_entries(directory / "blkio.throttle.io_service_bytes_recursive")
        or _blkio_entries(directory / "blkio.io_service_bytes_recursive")
    )
    blkio.io_serviced_recursive.extend(
        _blkio_entries(directory / "blkio.throttle.io_serviced_recursive")
        or _blkio_entries(directory / "blkio.io_serviced_recursive")
    )
    return blkio


def collect(paths: dict[str, str], cgroup_root: Path = CGROUP_ROOT) -> v1.Metrics:
    """Metrics for the cgroup described by ``paths`` (controller -> path)."""
    if is_unified(cgroup_root):
        raise errdefs.NotImplemented_(
            "task metrics for cgroup v2 (unified hierarchy) are not implemented yet"
        )
    metrics = v1.Metrics()

    def directory(controller: str) -> Path | None:
        path = paths.get(controller)
        return None if path is None else _controller_dir(cgroup_root, controller, path)

    if (memory_dir := directory("memory")) is not None:
        metrics.memory.CopyFrom(memory_stat(memory_dir))
    if (cpuacct_dir := directory("cpuacct")) is not None:
        metrics.cpu.CopyFrom(cpu_stat(cpuacct_dir, directory("cpu")))
    if (pids_dir := directory("pids")) is not None:
        metrics.pids.current = _read_uint(pids_dir / "pids.current") or 0
        metrics.pids.limit = _read_uint(pids_dir / "pids.max") or 0
    if (blkio_dir := directory("blkio")) is not None:
        metrics.blkio.CopyFrom(blkio_stat(blkio_dir))
    return metrics


def collect_for_pid(pid: int, cgroup_root: Path = CGROUP_ROOT) -> v1.Metrics:
    """Metrics of the cgroup that process ``pid`` (the task's init) lives in."""
    if is_unified(cgroup_root):
        raise errdefs.NotImplemented_(
            "task metrics for cgroup v2 (unified hierarchy) are not implemented yet"
        )
    try:
        paths = cgroup_paths_of_pid(pid)
    except FileNotFoundError as exc:
        raise errdefs.NotFound(f"process {pid} is gone; no metrics") from exc
    return collect(paths, cgroup_root)
