"""Tasks through runtime v2: Debian's Go ctr drives our daemon, which runs containerd's
own Go shim (containerd-shim-runc-v2) and runc.

The Go shim keeps its socket under /run/containerd/s and runc state under
/run/containerd/runc/<namespace>: every test uses its own namespace and container ids,
and the clean-up kills what is left (tasks, shims, runc state, mounts) even on failure.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.images import build
from tests.integration.conftest import CTR, TEST_CONFIG, Ctr, CtrResult

GO_SHIM = "/usr/bin/containerd-shim-runc-v2"
IMAGE = "docker.io/library/pyctr-busybox:1"
TASKS_STATE = "io.containerd.runtime.v2.task"

pytestmark = pytest.mark.skipif(not os.path.exists(GO_SHIM), reason="no Go runc shim")


def config_for(shim: str) -> str:
    return (
        TEST_CONFIG
        + '[plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2"]\n'
        + f'binary = "{shim}"\n'
    )


@dataclass
class Env:
    """One daemon (restartable on the same base), its ctr, namespace and fifo dir."""

    base: Path
    config: Path
    daemon: harness.Daemon
    namespace: str
    fifo_dir: Path
    shim: str
    ids: list[str] = field(default_factory=list)

    @property
    def ctr(self) -> Ctr:
        return Ctr(self.daemon.address)

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> CtrResult:
        return self.ctr(*args, namespace=self.namespace, check=check, timeout=timeout)

    def new_id(self) -> str:
        cid = f"c{uuid.uuid4().hex[:10]}"
        self.ids.append(cid)
        return cid

    def restart(self, kill: bool = True) -> None:
        if kill:
            self.daemon.kill()
        else:
            self.daemon.stop()
        self.daemon = _start(self.base, self.config)

    def bundle(self, cid: str) -> Path:
        return self.daemon.state / TASKS_STATE / self.namespace / cid

    def tasks(self) -> dict[str, tuple[str, str]]:
        """``ctr task ls``: id -> (pid, status)."""
        rows = self("task", "ls").stdout.splitlines()[1:]
        return {r.split()[0]: (r.split()[1], r.split()[2]) for r in rows}


def _start(base: Path, config: Path) -> harness.Daemon:
    root, state, address = base / "root", base / "state", base / "c.sock"
    return harness.start(
        harness.pycontainerd_argv(root, state, address, "--config", str(config)),
        address=address,
        root=root,
        state=state,
        log_path=base / "daemon.log",
    )


def _import_busybox(env: Env) -> None:
    archive = env.base / "busybox.tar"
    build.write_oci_archive(build.make_image(build.busybox_files()), archive, IMAGE)
    env("images", "import", str(archive), timeout=300)


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(str(path))]


def _cleanup(env: Env) -> None:
    """Remove whatever a test (or a failure) left: tasks, shims, runc state, mounts."""
    for cid in env.ids:
        if env.daemon.proc.poll() is None:
            env("task", "kill", "-s", "SIGKILL", cid, check=False)
            env("task", "delete", "-f", cid, check=False, timeout=30)
            env("containers", "delete", cid, check=False)
    for pid in harness.shim_pids(env.daemon.address):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    runc_root = f"/run/containerd/runc/{env.namespace}"
    for cid in env.ids:
        subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid], capture_output=True)
    with contextlib.suppress(OSError):
        os.rmdir(runc_root)  # the Go shim makes one per namespace
    for point in reversed(_mounts_under(env.base)):
        subprocess.run(["umount", "-l", point], capture_output=True)


PY_SHIM = shutil.which("containerd-shim-pyrunc-v2", path=os.path.dirname(sys.executable))


@pytest.fixture(
    params=[
        pytest.param(GO_SHIM, id="go-shim"),
        pytest.param(
            PY_SHIM,
            id="py-shim",
            marks=pytest.mark.skipif(PY_SHIM is None, reason="our shim is not installed"),
        ),
    ]
)
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    config = tmp_path / "config.toml"
    config.write_text(config_for(request.param))
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    namespace = f"t{uuid.uuid4().hex[:8]}"
    e = Env(tmp_path, config, _start(tmp_path, config), namespace, fifo_dir, request.param)
    try:
        _import_busybox(e)
        yield e
    finally:
        try:
            _cleanup(e)
        finally:
            e.daemon.stop()


class Events:
    """``ctr events`` running in the background; ``wait_for`` reads until a match."""

    def __init__(self, env: Env) -> None:
        self._proc = subprocess.Popen(
            [str(CTR), "--address", str(env.daemon.address), "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: list[str] = []
        self._buffer = b""

    def wait_for(self, *words: str, timeout: float = 30) -> str:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if all(w in line for w in words):
                return line
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not sel.select(remaining):
                    break
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                # keep every line: a later wait may want one that came in this chunk
                fresh = [raw.decode(errors="replace") for raw in complete]
                self.lines.extend(fresh)
                for line in fresh:
                    if all(w in line for w in words):
                        return line
        raise AssertionError(f"no event with {words} within {timeout}s; saw {self.lines}")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@contextlib.contextmanager
def events(env: Env) -> Iterator[Events]:
    ev = Events(env)
    try:
        # ctr subscribes some time after it starts: publish probes until one shows.
        for _ in range(30):
            probe = f"probe{uuid.uuid4().hex[:6]}"
            env.ctr("namespaces", "create", probe)
            with contextlib.suppress(AssertionError):
                ev.wait_for("/namespaces/create", probe, timeout=1)
                break
        else:
            raise AssertionError("ctr events never subscribed")
        yield ev
    finally:
        ev.close()


def run_detached(env: Env, *args: str) -> str:
    cid = env.new_id()
    env("run", "-d", "--null-io", IMAGE, cid, *args)
    return cid


def _metric_values(table: str) -> dict[str, str]:
    """ctr task metrics' METRIC/VALUE rows (same shape with either shim)."""
    _, _, rows = table.partition("METRIC")
    values = dict(line.split(None, 1) for line in rows.splitlines()[1:] if line.strip())
    return {name: value.strip() for name, value in values.items()}


def test_run_prints_hello(env: Env) -> None:
    cid = env.new_id()
    res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, cid, "echo", "hello")
    assert res.stdout == "hello\n"
    assert env.tasks() == {}
    assert not env.bundle(cid).exists()
    assert harness.shim_pids(env.daemon.address) == []


def test_exit_status_passes_through(env: Env) -> None:
    cid = env.new_id()
    res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, cid, "sh", "-c", "exit 3",
              check=False)  # fmt: skip
    assert res.returncode == 3


def test_detached_task_lifecycle(env: Env) -> None:
    with events(env) as ev:
        cid = run_detached(env, "sleep", "1000")
        ev.wait_for("/tasks/start", cid)
        pid, status = env.tasks()[cid]
        assert status == "RUNNING" and int(pid) > 0
        assert pid in env("task", "ps", cid).stdout.split()

        res = env("task", "exec", "--exec-id", "e1", "--fifo-dir", str(env.fifo_dir), cid,
                  "echo", "from exec")  # fmt: skip
        assert res.stdout == "from exec\n"

        metrics = _metric_values(env("task", "metrics", cid).stdout)
        assert int(metrics["memory.usage_in_bytes"]) > 0
        assert int(metrics["pids.current"]) >= 1
        env("task", "pause", cid)
        assert env.tasks()[cid][1] == "PAUSED"
        env("task", "resume", cid)
        assert env.tasks()[cid][1] == "RUNNING"

        res = env("task", "delete", cid, check=False)
        assert res.returncode != 0  # still running

        env("task", "kill", "-s", "SIGKILL", cid)  # sleep as pid 1 ignores SIGTERM
        ev.wait_for("/tasks/exit", f'"id":"{cid}"')
        assert env.tasks()[cid][1] == "STOPPED"
        env("task", "delete", cid)
        ev.wait_for("/tasks/delete", cid)
    assert env.tasks() == {}
    assert not env.bundle(cid).exists()
    assert _mounts_under(env.bundle(cid)) == []


def test_restart_reconnects_to_running_tasks(env: Env) -> None:
    ids = [run_detached(env, "sleep", "1000") for _ in range(3)]
    assert {c: s for c, (_, s) in env.tasks().items()} == dict.fromkeys(ids, "RUNNING")
    before = env.tasks()

    env.restart(kill=True)
    assert env.tasks() == before  # same pids, still RUNNING
    res = env("task", "exec", "--exec-id", "after", "--fifo-dir", str(env.fifo_dir), ids[0],
              "echo", "still here")  # fmt: skip
    assert res.stdout == "still here\n"
    env.restart(kill=False)  # a clean stop leaves the shims running too
    assert env.tasks() == before
    with events(env) as ev:
        for cid in ids:
            env("task", "kill", "-s", "SIGKILL", cid)
            line = ev.wait_for("/tasks/exit", f'"id":"{cid}"')
            assert '"exit_status":137' in line.replace(" ", "")
            env("task", "delete", cid)
    assert env.tasks() == {}
    assert harness.shim_pids(env.daemon.address) == []


def test_killed_shim_is_cleaned_up(env: Env) -> None:
    cid = run_detached(env, "sleep", "1000")
    bundle = env.bundle(cid)
    assert _mounts_under(bundle / "rootfs")
    # containerd 1.6's shim writes no shim.pid; its argv names the task
    (shim_pid,) = harness.shim_pids(env.daemon.address, cid)
    with events(env) as ev:
        os.kill(shim_pid, signal.SIGKILL)
        ev.wait_for("/tasks/exit", f'"id":"{cid}"')
        ev.wait_for("/tasks/delete", cid)
    assert cid not in env.tasks()
    assert not bundle.exists()
    assert _mounts_under(bundle) == []
    # the container's processes went with it (runc delete --force)
    res = subprocess.run(
        ["runc", "--root", f"/run/containerd/runc/{env.namespace}", "state", cid],
        capture_output=True,
    )
    assert res.returncode != 0


def test_unknown_runtime_is_a_clear_error(env: Env) -> None:
    cid = env.new_id()
    res = env("run", "--rm", "--runtime", "io.containerd.nope.v1", IMAGE, cid, "true",
              check=False)  # fmt: skip
    assert res.returncode != 0
    assert 'binary not installed "containerd-shim-nope-v1"' in res.stderr
    assert not env.bundle(cid).exists()


def test_runc_error_is_passed_through(env: Env) -> None:
    cid = env.new_id()
    res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, cid, "/no/such/binary",
              check=False)  # fmt: skip
    assert res.returncode != 0
    assert "/no/such/binary" in res.stderr and "no such file or directory" in res.stderr
    assert env.tasks() == {}
    assert not env.bundle(cid).exists()
    assert _mounts_under(env.bundle(cid)) == []


def test_matches_containerd(env: Env, reference: Ctr) -> None:
    """The same ctr commands give the same output and status against containerd 1.6."""
    if env.shim != GO_SHIM:
        pytest.skip("compared once, with the same shim containerd uses")
    archive = env.base / "busybox.tar"
    reference("images", "import", str(archive), namespace=env.namespace, timeout=300)
    fifo = str(env.fifo_dir)

    def both(
        options: list[str], *command: str
    ) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        cid = env.new_id()
        argv = ["run", "--rm", "--fifo-dir", fifo, *options, IMAGE, cid, *command]
        ours = env(*argv, check=False)
        theirs = reference(*argv, namespace=env.namespace, check=False)
        return (
            (ours.returncode, ours.stdout, ours.stderr),
            (theirs.returncode, theirs.stdout, theirs.stderr),
        )

    ours, theirs = both(["--env=A=1"], "sh", "-c", "echo $A; exit 4")
    assert ours[:2] == theirs[:2] == (4, "1\n")
    ours, theirs = both(["--runtime=io.containerd.nope.v1"], "true")
    assert ours == theirs
    ours, theirs = both([], "/no/such/binary")
    assert ours == theirs  # runc's error, word for word
