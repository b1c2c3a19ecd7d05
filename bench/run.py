"""Side-by-side benchmarks: pycontainerd and Debian's containerd, the same Go ctr.

Both daemons run at once, each in its own temporary root with its own socket
(containerd in a private mount namespace with a tmpfs over /run/containerd). Each
workload runs against both, interleaved round by round so that noise on the shared
disk hits both alike, and the table shows medians and the ratio
pycontainerd/containerd (below 1.0 means pycontainerd is faster). Daemon CPU time per
operation is shown beside wall time, as it is the steadier number on this machine.

The unpack workload imports a generated 1 GB image (bench/image.py, cached in
bench/cache/) once without unpacking, then per round imports it again into a fresh
namespace: the content is already in the store, so what is measured is mostly the
unpack (Go ctr driving Snapshots.Prepare, Diff.Apply and Snapshots.Commit).

The cold pull workload (bench/pull.py) pushes the same image to a local
docker-registry once, then per round empties the daemon of it (images rm --sync, checked
on disk) and times `pyctr images pull` against pycontainerd and Go `ctr images pull`
against containerd, both fetching and unpacking into overlayfs; it checks after each
round that every blob and the whole snapshot chain are there.

The task workloads (bench/tasks.py) run busybox containers through each daemon's own
runc shim: ours maps io.containerd.runc.v2 to the Python shim by default (or, with
--go-shim-for-ours, to containerd's Go shim, which separates the daemon's cost from
the shim's); the memory workload prints MiB per running container below its row.

Usage: python bench/run.py [--rounds N] [--only NAME ...] [--go-shim-for-ours]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pycontainerd import harness

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import content, image, pull, tasks

CTR = shutil.which("ctr") or "ctr"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    daemon: harness.Daemon

    def ctr(self, *args: str) -> None:
        subprocess.run(
            [CTR, "--address", str(self.daemon.address), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def cpu_seconds(self) -> float:
        """User+system CPU of the daemon (and its reaped children) so far."""
        fields = Path(f"/proc/{self.daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime stime cutime cstime are fields 14-17 (1-based); index 11.. after the ')'
        return sum(int(x) for x in fields[11:15]) / CLK_TCK


@dataclass
class Workload:
    name: str
    ops: int  # operations per run, for per-op figures
    run: Callable[[Target, int], None]  # (target, round number)
    setup: Callable[[Target], None] | None = None  # once per target, not measured
    before_round: Callable[[int], None] | None = None  # once per round, not measured
    # Per target around each timed run, not measured; after_round runs even if it failed.
    before_target: Callable[[Target, int], None] | None = None
    after_round: Callable[[Target, int], None] | None = None
    teardown: Callable[[Target], None] | None = None  # once per target, even on failure
    report: Callable[[], list[str]] | None = None  # extra lines printed after the row


def _version(t: Target, _: int) -> None:
    t.ctr("version")


def _namespaces(t: Target, rnd: int) -> None:
    for i in range(1000):
        name = f"bench-{rnd}-{i}"
        t.ctr("namespaces", "create", name)
        t.ctr("namespaces", "rm", name)


def _unpack_setup(t: Target) -> None:
    # The blobs go into the store once; every round then only unpacks them.
    t.ctr(
        "-n", "bench-unpack-content", "images", "import", "--no-unpack", str(image.cached_image())
    )


def _unpack(t: Target, rnd: int) -> None:
    # A fresh namespace per round: its content records point at blobs already on disk
    # (containerd's shared content policy; ctr skips writing them), but it has no
    # snapshots, so the import unpacks all five layers.
    namespace = f"bench-unpack-{rnd}"
    t.ctr(
        "-n", namespace, "images", "import", "--snapshotter", "overlayfs", str(image.cached_image())
    )


class _ContentRound:
    """A fresh 1 GiB blob per round, shared by both daemons, made before the round."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.digest = ""

    def prepare(self, rnd: int) -> None:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="pycontainerd-bench-blob-"))
            atexit.register(shutil.rmtree, self.dir, ignore_errors=True)
        for old in self.dir.iterdir():
            old.unlink()
        self.digest = content.make_blob(self.dir / "blob")

    def run(self, t: Target, rnd: int) -> None:
        assert self.dir is not None
        ctr = [CTR, "--address", str(t.daemon.address)]
        content.ingest_and_get(ctr, f"bench-content-{rnd}", self.dir / "blob", self.digest)


_content_round = _ContentRound()
CONTENT = "content ingest+get 1 GiB"
UNPACK = "unpack 1 GB image (5 gzip layers)"
COLD_PULL = "cold pull 1 GB image (5 gzip layers)"
RUN = "ctr run --rm /bin/true"
EXEC = "ctr task exec /bin/true"
DETACHED = f"{tasks.DETACHED} detached containers started"
MEMORY = f"memory: {tasks.DETACHED} running containers"
_run = tasks.RunLatency()
_exec = tasks.ExecLatency()
_detached = tasks.Detached()
_memory = tasks.Detached(measure_memory=True)
_cold_pull = pull.ColdPull()
WORKLOADS = [
    Workload("ctr version round trip", 1, _version),
    Workload("1,000 namespace create+delete", 1000, _namespaces),
    Workload(CONTENT, 1, _content_round.run, before_round=_content_round.prepare),
    # Before the unpack workload: it leaves the same blobs in the store, and a cold pull
    # must find none.
    Workload(COLD_PULL, 1, _cold_pull.run, _cold_pull.setup,
             before_target=_cold_pull.before_target, after_round=_cold_pull.after_round,
             teardown=_cold_pull.teardown, report=_cold_pull.report),
    Workload(UNPACK, 1, _unpack, _unpack_setup),
    Workload(RUN, 1, _run.run, _run.setup, after_round=_run.after_round, teardown=_run.teardown),
    Workload(EXEC, 1, _exec.run, _exec.setup, teardown=_exec.teardown),
    Workload(DETACHED, tasks.DETACHED, _detached.run, _detached.setup,
             after_round=_detached.after_round, teardown=_detached.teardown),
    Workload(MEMORY, tasks.DETACHED, _memory.run, _memory.setup,
             before_target=_memory.before_target, after_round=_memory.after_round,
             teardown=_memory.teardown, report=_memory.report),
]  # fmt: skip
ROUNDS = {
    "ctr version round trip": 30,
    "1,000 namespace create+delete": 3,
    CONTENT: 3,
    UNPACK: 3,
    COLD_PULL: 2,
    RUN: 20,
    EXEC: 20,
    DETACHED: 3,
    MEMORY: 2,
}


def start_containerd(base: Path) -> harness.Daemon:
    Path("/run/containerd").mkdir(exist_ok=True)
    root, state, address = base / "root", base / "state", base / "c.sock"
    config = base / "config.toml"
    config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    argv = [
        shutil.which("containerd") or "containerd",
        "--config",
        str(config),
        "--root",
        str(root),
        "--state",
        str(state),
        "--address",
        str(address),
    ]
    wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs /run/containerd && exec "$@"',
        "containerd",
    ]
    return harness.start(
        argv, address=address, root=root, state=state, log_path=base / "daemon.log", preexec=wrapper
    )


GO_SHIM = "/usr/bin/containerd-shim-runc-v2"


def start_pycontainerd(base: Path, shim: str | None = None) -> harness.Daemon:
    """Our daemon; ``shim`` replaces its default runc shim (ours) with another binary."""
    root, state, address = base / "root", base / "state", base / "c.sock"
    extra = ["--log-level", "warn"]
    if shim is not None:
        config = base / "config.toml"
        config.write_text(
            'version = 2\n[plugins."io.containerd.runtime.v2.task".runtimes'
            f'."io.containerd.runc.v2"]\nbinary = "{shim}"\n'
        )
        extra += ["--config", str(config)]
    return harness.start(
        harness.pycontainerd_argv(root, state, address, *extra),
        address=address,
        root=root,
        state=state,
        log_path=base / "daemon.log",
    )


def measure(
    w: Workload, targets: list[Target], rounds: int
) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {t.name: ([], []) for t in targets}
    try:
        if w.setup is not None:
            for t in targets:
                w.setup(t)
        for rnd in range(rounds):
            if w.before_round is not None:
                w.before_round(rnd)
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                if w.before_target is not None:
                    w.before_target(t, rnd)
                try:
                    cpu0 = t.cpu_seconds()
                    t0 = time.perf_counter()
                    w.run(t, rnd)
                    wall = time.perf_counter() - t0
                    results[t.name][0].append(wall)
                    results[t.name][1].append(t.cpu_seconds() - cpu0)
                finally:
                    if w.after_round is not None:
                        w.after_round(t, rnd)
    finally:
        if w.teardown is not None:
            _teardown_all(w.teardown, targets)
    return results


def _teardown_all(teardown: Callable[[Target], None], targets: list[Target]) -> None:
    """``teardown`` for every target, even if one fails; the first error is raised."""
    error: BaseException | None = None
    for t in targets:
        try:
            teardown(t)
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, help="override the rounds of every workload")
    p.add_argument("--only", nargs="*", help="substrings of workload names to run")
    p.add_argument(
        "--go-shim-for-ours",
        action="store_true",
        help=f"run pycontainerd with containerd's Go shim ({GO_SHIM}) to isolate daemon costs",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (containerd needs it)", file=sys.stderr)
        return 1
    workloads = [w for w in WORKLOADS if not args.only or any(o in w.name for o in args.only)]
    with tempfile.TemporaryDirectory(prefix="pycontainerd-bench-") as tmp:
        base = Path(tmp)
        (base / "py").mkdir()
        (base / "go").mkdir()
        ours = start_pycontainerd(base / "py", GO_SHIM if args.go_shim_for_ours else None)
        try:
            theirs = start_containerd(base / "go")
            try:
                targets = [Target("pycontainerd", ours), Target("containerd", theirs)]
                header = (
                    f"{'workload':34} {'pycontainerd':>13} {'containerd':>13} {'ratio':>7}"
                    f"   {'cpu/op py':>10} {'cpu/op go':>10} {'cpu ratio':>9}"
                )
                print(header)
                print("-" * len(header))
                for w in workloads:
                    res = measure(w, targets, args.rounds or ROUNDS.get(w.name, 5))
                    py_wall = statistics.median(res["pycontainerd"][0])
                    go_wall = statistics.median(res["containerd"][0])
                    py_cpu = statistics.median(res["pycontainerd"][1]) / w.ops
                    go_cpu = statistics.median(res["containerd"][1]) / w.ops
                    cpu_ratio = f"{py_cpu / go_cpu:.2f}x" if go_cpu > 0 else "n/a"
                    print(
                        f"{w.name:34} {fmt_time(py_wall):>13} {fmt_time(go_wall):>13} "
                        f"{py_wall / go_wall:>6.2f}x   {fmt_time(py_cpu):>10} "
                        f"{fmt_time(go_cpu):>10} {cpu_ratio:>9}",
                        flush=True,
                    )
                    if w.report is not None:
                        for line in w.report():
                            print(line, flush=True)
            finally:
                theirs.stop()
        finally:
            ours.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
