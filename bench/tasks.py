"""Runtime workloads: containers run through each daemon's own runc shim.

Ours maps ``io.containerd.runc.v2`` to the Python shim (containerd-shim-pyrunc-v2) by
default; Debian's containerd runs its Go containerd-shim-runc-v2. Every workload uses a
busybox-static image (``pycontainerd.images.build``) imported once per daemon into the
``bench-tasks`` namespace, and the Go ctr for every operation:

- run latency: ``ctr run --rm --null-io IMG id /bin/true``, one per round;
- exec latency: ``ctr task exec`` of ``/bin/true`` in one long-running container;
- 50 detached: ``ctr run -d --null-io`` of ``sleep`` fifty times, one after another;
- memory: the same fifty, then the daemon's RSS growth plus the PSS (from
  ``/proc/<pid>/smaps_rollup``) of the daemon's shims (each task's init is a shim's
  child; ours pool up to eight containers per shim by default) and of our shims' fork
  server, divided by fifty.

The reference containerd runs in a private mount namespace with a tmpfs over
/run/containerd, so FIFOs for exec go to a directory under /tmp that both see.
Whatever a workload started is removed (tasks killed and deleted, containers removed)
after each round and again at teardown, also when the round failed.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pycontainerd import harness
from pycontainerd.images import build

CTR = shutil.which("ctr") or "ctr"
NAMESPACE = "bench-tasks"
IMAGE = "docker.io/library/bench-busybox:1"
DETACHED = 50
CTR_TIMEOUT = 120.0


class Target(Protocol):
    """What a workload needs of bench.run.Target."""

    @property
    def name(self) -> str: ...

    @property
    def daemon(self) -> harness.Daemon: ...


def ctr(t: Target, *args: str) -> str:
    """Run Go ctr against ``t`` in the bench namespace; its stdout, or RuntimeError with
    its stderr."""
    res = subprocess.run(
        [CTR, "--address", str(t.daemon.address), "-n", NAMESPACE, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=CTR_TIMEOUT,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"{t.name}: ctr {' '.join(args)}: exit {res.returncode}: "
            f"{res.stderr.decode(errors='replace').strip()}"
        )
    return res.stdout.decode(errors="replace")


def remove(t: Target, ids: Iterable[str]) -> None:
    """Kill and delete the tasks of ``ids`` and remove the containers; missing ones are
    fine. Raises RuntimeError if any of them is still listed afterwards."""
    wanted = sorted(set(ids))
    if not wanted:
        return
    # Each command takes many ids and goes on past the ones that do not exist.
    for args in (("task", "delete", "--force"), ("containers", "delete")):
        with contextlib.suppress(RuntimeError):
            ctr(t, *args, *wanted)
    left = set(ctr(t, "containers", "list", "-q").split()) & set(wanted)
    if left:
        raise RuntimeError(f"{t.name}: containers left after clean-up: {sorted(left)}")


class _Image:
    """The busybox OCI archive, written once and imported into each daemon."""

    def __init__(self) -> None:
        self._dir: Path | None = None

    def archive(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="pycontainerd-bench-busybox-"))
            atexit.register(self.close)
            img = build.make_image(build.busybox_files(), cmd=("/bin/sh",))
            build.write_oci_archive(img, self._dir / "busybox.tar", IMAGE)
        return self._dir / "busybox.tar"

    def import_into(self, t: Target) -> None:
        ctr(t, "images", "import", str(self.archive()))

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


IMAGE_ARCHIVE = _Image()


@dataclass
class _Started:
    """Container ids a workload started per target and has not yet removed."""

    live: dict[str, set[str]] = field(default_factory=dict)

    def add(self, t: Target, cid: str) -> None:
        self.live.setdefault(t.name, set()).add(cid)

    def discard(self, t: Target, cid: str) -> None:
        self.live.get(t.name, set()).discard(cid)

    def clean(self, t: Target) -> None:
        ids = self.live.get(t.name, set())
        remove(t, ids)
        ids.clear()


class RunLatency:
    """``ctr run --rm --null-io IMG id /bin/true``: create, start, wait, delete."""

    def __init__(self) -> None:
        self._started = _Started()

    def setup(self, t: Target) -> None:
        IMAGE_ARCHIVE.import_into(t)

    def run(self, t: Target, rnd: int) -> None:
        cid = f"run-{rnd}"
        self._started.add(t, cid)
        ctr(t, "run", "--rm", "--null-io", IMAGE, cid, "/bin/true")
        self._started.discard(t, cid)  # --rm removed it

    def after_round(self, t: Target, rnd: int) -> None:
        self._started.clean(t)  # only what a failed round left

    def teardown(self, t: Target) -> None:
        self._started.clean(t)


class ExecLatency:
    """``ctr task exec`` of ``/bin/true`` (FIFOs for its stdio) in a running container."""

    CONTAINER = "exec-target"

    def __init__(self) -> None:
        self._started = _Started()
        self._fifo_dir: Path | None = None

    def setup(self, t: Target) -> None:
        IMAGE_ARCHIVE.import_into(t)
        if self._fifo_dir is None:
            self._fifo_dir = Path(tempfile.mkdtemp(prefix="pycontainerd-bench-fifo-"))
        self._started.add(t, self.CONTAINER)
        ctr(t, "run", "-d", "--null-io", IMAGE, self.CONTAINER, "sleep", "100000")

    def run(self, t: Target, rnd: int) -> None:
        assert self._fifo_dir is not None
        ctr(t, "task", "exec", "--fifo-dir", str(self._fifo_dir), "--exec-id", f"e{rnd}",
            self.CONTAINER, "/bin/true")  # fmt: skip

    def teardown(self, t: Target) -> None:
        try:
            self._started.clean(t)
        finally:
            if self._fifo_dir is not None and not any(self._started.live.values()):
                shutil.rmtree(self._fifo_dir, ignore_errors=True)
                self._fifo_dir = None


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages count divided by the processes sharing them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss for pid {pid}")


def task_pids(t: Target, ids: Iterable[str]) -> dict[str, int]:
    """The init pid of each of the tasks ``ids`` that runs (``ctr task ls``)."""
    wanted = set(ids)
    found = {}
    for line in ctr(t, "task", "ls").splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[0] in wanted and words[2] == "RUNNING":
            found[words[0]] = int(words[1])
    return found


def zygote_pids(shims: Iterable[int]) -> list[int]:
    """The fork servers that forked ``shims``, and the spare each keeps forked ahead:
    their memory is part of what the shims cost, so it is counted with them. (Found
    by parentage: other daemons' zygotes may share /run/containerd/s.)"""
    zygote = b"containerd-shim-pyrunc-v2-zygote"
    spare = b"containerd-shim-pyrunc-v2-spare"
    argvs = dict(harness.command_lines())
    zygotes = set()
    for pid in shims:
        with contextlib.suppress(OSError):
            parent = harness.parent_pid(pid)
            if argvs.get(parent, [b""])[0] == zygote:
                zygotes.add(parent)
    spares = set()
    for pid, argv in argvs.items():
        if argv[0] == spare:
            with contextlib.suppress(OSError):
                if harness.parent_pid(pid) in zygotes:
                    spares.add(pid)
    return sorted(zygotes | spares)


@dataclass(frozen=True)
class MemorySample:
    containers: int
    daemon_growth_kib: int
    shims_pss_kib: int
    shims: int

    @property
    def per_container_mib(self) -> float:
        return (self.daemon_growth_kib + self.shims_pss_kib) / self.containers / 1024


class Detached:
    """``ctr run -d --null-io IMG id sleep 100000``, DETACHED times one after another.

    With ``measure_memory`` it also samples, after the last start, the daemon's RSS
    growth over the round and the PSS of the shims of these containers.
    """

    def __init__(self, measure_memory: bool = False) -> None:
        self._started = _Started()
        self._measure_memory = measure_memory
        self._baseline_kib: dict[str, int] = {}
        self._completed: dict[str, int] = {}  # target name -> the round it finished
        self.samples: dict[str, list[MemorySample]] = {}

    def setup(self, t: Target) -> None:
        IMAGE_ARCHIVE.import_into(t)

    def ids(self, rnd: int) -> list[str]:
        return [f"detached-{rnd}-{i}" for i in range(DETACHED)]

    def before_target(self, t: Target, rnd: int) -> None:
        if self._measure_memory:
            self._baseline_kib[t.name] = _status_kib(t.daemon.proc.pid, "VmRSS")

    def run(self, t: Target, rnd: int) -> None:
        self._completed.pop(t.name, None)
        for cid in self.ids(rnd):
            self._started.add(t, cid)
            ctr(t, "run", "-d", "--null-io", IMAGE, cid, "sleep", "100000")
        self._completed[t.name] = rnd

    def after_round(self, t: Target, rnd: int) -> None:
        try:
            # After a failed run there is nothing to sample, and the run's error counts.
            if self._measure_memory and self._completed.get(t.name) == rnd:
                self._sample(t, rnd)
        finally:
            self._started.clean(t)

    def _sample(self, t: Target, rnd: int) -> None:
        growth = _status_kib(t.daemon.proc.pid, "VmRSS") - self._baseline_kib[t.name]
        pids = harness.shim_pids(t.daemon.address)
        tasks = task_pids(t, self.ids(rnd))
        served = [cid for cid, pid in tasks.items() if harness.parent_pid(pid) in pids]
        if len(served) != DETACHED:
            raise RuntimeError(f"{t.name}: shims found for {len(served)} of {DETACHED} tasks")
        if t.name == "pycontainerd":  # /run/containerd/s paths show in every mount namespace
            pids += zygote_pids(pids)
        sample = MemorySample(DETACHED, growth, sum(pss_kib(p) for p in pids), len(pids))
        self.samples.setdefault(t.name, []).append(sample)

    def teardown(self, t: Target) -> None:
        self._started.clean(t)

    def report(self) -> list[str]:
        lines = []
        medians: dict[str, float] = {}
        for name, samples in self.samples.items():
            medians[name] = statistics.median(s.per_container_mib for s in samples)
            s = samples[-1]
            lines.append(
                f"  {name}: {medians[name]:.2f} MiB/container (median of {len(samples)}; "
                f"last round: daemon RSS +{s.daemon_growth_kib / 1024:.1f} MiB, "
                f"{s.shims} shims PSS {s.shims_pss_kib / 1024:.1f} MiB, "
                f"{s.shims_pss_kib / s.shims / 1024:.2f} MiB each)"
            )
        py, go = medians.get("pycontainerd"), medians.get("containerd")
        if py is not None and go:
            lines.append(f"  memory per container ratio pycontainerd/containerd: {py / go:.2f}x")
        return lines
