"""Debian's containerd 1.6 runs containers through our shim (``--runtime
io.containerd.pyrunc.v2``), driven by Debian's Go ctr.

containerd runs in a private mount namespace (tmpfs over /run/containerd, where 1.6
puts shim sockets and runc state); clean-up enters it to delete what is left, then
kills our shims, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.images import build
from tests.integration.conftest import CONTAINERD, CTR, CtrResult

RUNTIME = "io.containerd.pyrunc.v2"
SHIM = "containerd-shim-pyrunc-v2"
IMAGE = "docker.io/library/pyrunc-busybox:1"
BIN_DIR = str(Path(sys.executable).parent)

pytestmark = pytest.mark.skipif(
    CONTAINERD is None or shutil.which("runc") is None, reason="needs containerd and runc"
)


@dataclass
class Reference:
    """Debian's containerd with our shim on its PATH, and ctr against it."""

    daemon: harness.Daemon
    base: Path
    events: Events | None = None

    @property
    def fifo_dir(self) -> str:
        return str(self.base / "fifo")

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, input_bytes: bytes | None = None
    ) -> CtrResult:
        proc = subprocess.run(
            [str(CTR), "--address", str(self.daemon.address), *args],
            capture_output=True,
            input=input_bytes,
            timeout=timeout,
        )
        result = CtrResult(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} failed ({proc.returncode}):\n{result.stderr}\n"
                f"daemon log:\n{self.daemon.log()[-3000:]}"
            )
        return result

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> CtrResult:
        """``ctr run`` with our runtime and a FIFO directory in the test's tree."""
        return self(
            "run", "--runtime", RUNTIME, "--fifo-dir", self.fifo_dir, *args,
            check=check, timeout=timeout,
        )  # fmt: skip

    def in_namespace(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        """Runs ``argv`` in the daemon's mount namespace."""
        return subprocess.run(
            ["nsenter", "-t", str(self.daemon.proc.pid), "-m", *argv],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def shim_pids(self) -> list[int]:
        """Our shims serving this daemon."""
        return harness.shim_pids(self.daemon.address, program=SHIM)


class Events:
    """``ctr events`` running beside a test: waits for a topic instead of polling."""

    def __init__(self, address: Path) -> None:
        self.proc = subprocess.Popen(
            [str(CTR), "--address", str(address), "events"], stdout=subprocess.PIPE, bufsize=0
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._partial = b""
        self.lines: list[str] = []

    def wait_for(self, topic: str, text: str, timeout: float = 30.0) -> str:
        """The first line (seen before or now) with ``topic`` and ``text``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if f" {topic} " in line and text in line:
                    return line
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._fd], [], [], remaining)[0]:
                raise AssertionError(f"no {topic} event for {text}; saw {self.lines}")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise AssertionError("ctr events exited")
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def ref(tmp_path: Path) -> Iterator[Reference]:
    base = tmp_path / "ref"
    base.mkdir()
    (base / "fifo").mkdir()
    root, state, address = base / "root", base / "state", base / "c.sock"
    config = base / "config.toml"
    config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    wrapper = [
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        'mount -t tmpfs tmpfs /run/containerd && exec "$@"', "containerd",
    ]  # fmt: skip
    Path("/run/containerd").mkdir(exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    daemon = harness.start(
        [str(CONTAINERD), "--config", str(config), "--root", str(root), "--state",
         str(state), "--address", str(address)],
        address=address, root=root, state=state, log_path=base / "containerd.log",
        env=env, preexec=wrapper,
    )  # fmt: skip
    reference = Reference(daemon, base)
    try:
        archive = base / "busybox.tar"
        build.write_oci_archive(build.make_image(build.busybox_files()), archive, IMAGE)
        reference("images", "import", str(archive), timeout=300)
        reference.events = Events(address)
        yield reference
    finally:
        _clean_up(reference)


def _clean_up(reference: Reference) -> None:
    """Deletes every runc container of the namespace, then our shims, then the daemon."""
    if reference.events is not None:
        reference.events.close()
    listing = reference.in_namespace("runc", "--root", "/run/containerd/runc/default", "list", "-q")
    for cid in listing.stdout.decode().split():
        reference.in_namespace(
            "runc", "--root", "/run/containerd/runc/default", "delete", "--force", cid
        )
    for pid in reference.shim_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(harness.DaemonError):
        reference.daemon.stop()


def _cid() -> str:
    return "c" + uuid.uuid4().hex[:10]


def _wait_exited(pids: list[int], timeout: float = 20.0) -> None:
    """Waits for processes that are not our children (shims) through their pidfds."""
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    try:
        deadline = time.monotonic() + timeout
        pending = list(fds)
        while pending:
            remaining = deadline - time.monotonic()
            ready = select.select(pending, [], [], max(remaining, 0))[0] if remaining > 0 else []
            if not ready:
                raise AssertionError(f"processes {pids} did not exit")
            pending = [fd for fd in pending if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def _events(ref: Reference) -> Events:
    assert ref.events is not None
    return ref.events


def test_run_echo(ref: Reference) -> None:
    result = ref.run("--rm", IMAGE, _cid(), "echo", "hello")
    assert result.stdout == "hello\n"
    _wait_exited(ref.shim_pids())  # the shim goes away after Shutdown


def test_exit_code_passthrough(ref: Reference) -> None:
    result = ref.run(
        "--rm", IMAGE, _cid(), "sh", "-c", "echo out; echo err >&2; exit 3", check=False
    )
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr


def test_detached_task_lifecycle(ref: Reference) -> None:
    cid = _cid()
    ref.run("-d", IMAGE, cid, "sleep", "300")
    tasks = ref("task", "ls").stdout
    assert cid in tasks and "RUNNING" in tasks
    assert len(ref("task", "ps", cid).stdout.strip().splitlines()) == 2  # header + init

    exec_result = ref(
        "task", "exec", "--fifo-dir", ref.fifo_dir, "--exec-id", "e1", cid,
        "sh", "-c", "echo in-exec; exit 5", check=False,
    )  # fmt: skip
    assert exec_result.returncode == 5
    assert exec_result.stdout == "in-exec\n"

    ref("task", "pause", cid)
    assert "PAUSED" in ref("task", "ls").stdout
    ref("task", "resume", cid)
    assert "RUNNING" in ref("task", "ls").stdout

    shims = ref.shim_pids()
    assert len(shims) == 1
    ref("task", "kill", "--signal", "SIGKILL", cid)
    exit_line = _events(ref).wait_for("/tasks/exit", f'"container_id":"{cid}","id":"{cid}"')
    assert '"exit_status":137' in exit_line
    assert "STOPPED" in _task_line(ref, cid)
    ref("task", "delete", cid)
    assert cid not in ref("task", "ls").stdout
    ref("container", "delete", cid)
    _wait_exited(shims)
    for topic in ("/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
                  "/tasks/paused", "/tasks/resumed", "/tasks/delete"):  # fmt: skip
        _events(ref).wait_for(topic, cid)
    assert '"exit_status":5' in _events(ref).wait_for("/tasks/exit", '"id":"e1"')


def test_log_uri_file(ref: Reference, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "out.log"
    ref.run("--rm", "--log-uri", f"file://{log}", IMAGE, _cid(), "sh", "-c", "echo a; echo b >&2")
    assert sorted(log.read_text().splitlines()) == ["a", "b"]


def test_log_uri_binary(ref: Reference, tmp_path: Path) -> None:
    out = tmp_path / "binary.log"
    done = tmp_path / "done"
    os.mkfifo(done)
    done_fd = os.open(done, os.O_RDONLY | os.O_NONBLOCK)
    logger = tmp_path / "logger.sh"
    # A containerd logging binary: stdout on fd 3, stderr on fd 4, ready by closing fd 5.
    logger.write_text(
        "#!/bin/sh\n"
        f'exec 5>&-\necho "$CONTAINER_NAMESPACE/$CONTAINER_ID $1" > {out}.env\n'
        f"cat <&3 >> {out} & cat <&4 >> {out}; wait\necho done > {done}\n"
    )
    logger.chmod(0o755)
    cid = _cid()
    try:
        ref.run("--rm", "--log-uri", f"binary://{logger}?tag=x", IMAGE, cid, "sh", "-c",
                "echo to-log")  # fmt: skip
        assert select.select([done_fd], [], [], 20)[0], "the logger did not finish"
    finally:
        os.close(done_fd)
    assert out.read_text() == "to-log\n"
    assert (tmp_path / "binary.log.env").read_text() == f"default/{cid} tag\n"


def test_shim_group_shares_one_process(ref: Reference) -> None:
    first, second = _cid(), _cid()
    group = "--annotation=io.containerd.runc.v2.group=g1"
    ref.run("-d", group, IMAGE, first, "sleep", "300")
    ref.run("-d", group, IMAGE, second, "sleep", "300")
    shims = ref.shim_pids()
    assert len(shims) == 1
    for cid in (first, second):
        ref("task", "kill", "--signal", "SIGKILL", cid)
        _events(ref).wait_for("/tasks/exit", f'"container_id":"{cid}"')
        ref("task", "delete", cid)
    _wait_exited(shims)


def _task_line(ref: Reference, cid: str) -> str:
    return next((line for line in ref("task", "ls").stdout.splitlines() if cid in line), "")


def _on_terminal(argv: list[str], keys: bytes, timeout: float = 30) -> tuple[str, int]:
    """Runs ``argv`` on a pty we drive: types ``keys``, returns (output, exit code)."""
    pid, master = pty.fork()
    if pid == 0:  # the child: ctr on our terminal
        os.execv(argv[0], argv)
    output = b""
    status = 0
    try:
        os.write(master, keys)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last user exited
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    return output.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_tty(ref: Reference) -> None:
    argv = [str(CTR), "--address", str(ref.daemon.address), "run", "--runtime", RUNTIME,
            "--fifo-dir", ref.fifo_dir, "--rm", "-t", IMAGE, _cid(), "sh"]  # fmt: skip
    text, code = _on_terminal(argv, b"tty; stty size; exit 7\n")
    assert "/dev/pts/0" in text, text
    assert code == 7, text


def test_exec_tty(ref: Reference) -> None:
    cid = _cid()
    ref.run("-d", IMAGE, cid, "sleep", "300")
    argv = [str(CTR), "--address", str(ref.daemon.address), "task", "exec", "--fifo-dir",
            ref.fifo_dir, "-t", "--exec-id", "t1", cid, "sh"]  # fmt: skip
    text, code = _on_terminal(argv, b"tty; exit 4\n")
    assert "/dev/pts/" in text, text
    assert code == 4, text


@pytest.mark.skipif(
    not Path("/sys/fs/cgroup/memory/cgroup.event_control").exists(),
    reason="no cgroup v1 memory controller",
)
def test_oom_event(ref: Reference) -> None:
    cid = _cid()
    # A shell doubling a string until the 16 MiB limit kills it.
    result = ref.run("--rm", "--memory-limit", str(16 << 20), IMAGE, cid, "sh", "-c",
                     "a=xxxxxxxx; while :; do a=$a$a; done", check=False)  # fmt: skip
    assert result.returncode == 137
    _events(ref).wait_for("/tasks/oom", cid)
