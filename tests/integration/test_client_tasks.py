"""The Python client, pyctr run / containers / tasks, against Debian's containerd 1.6.

The reference daemon runs in a private mount namespace with a tmpfs over
/run/containerd, so every FIFO goes in a directory under the test's tmp_path, which
both sides see (as ``ctr run --fifo-dir`` does). Every test removes what it started,
tasks first, even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from pycontainerd import harness
from pycontainerd.client import AsyncClient, Client, cio
from pycontainerd.errdefs import FailedPrecondition, NotFound
from pycontainerd.images import build
from pycontainerd.oci import spec as oci
from tests.integration.conftest import TEST_CONFIG, Ctr, CtrResult

IMAGE = "docker.io/library/pyctr-busybox:1"
PYCTR = str(Path(sys.executable).parent / "pyctr")
GO_SHIM = "/usr/bin/containerd-shim-runc-v2"


@dataclass
class Env:
    """One daemon, driven by pyctr and the Python client, checked with Go ctr."""

    go: Ctr
    namespace: str
    fifo_dir: Path
    tmp: Path
    daemon: str = "containerd"

    @property
    def address(self) -> str:
        return str(self.go.address)

    def ctr(self, *args: str, check: bool = True) -> CtrResult:
        return self.go(*args, namespace=self.namespace, check=check)

    def pyctr(
        self, *args: str, input_bytes: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [PYCTR, "--address", self.address, "--namespace", self.namespace, *args],
            capture_output=True,
            input=input_bytes if input_bytes is not None else b"",
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pyctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.decode()}"
                f"\nstdout: {proc.stdout!r}"
            )
        return proc


def _clean(env: Env) -> None:
    for tid in env.ctr("tasks", "ls", "-q", check=False).stdout.split():
        env.ctr("tasks", "kill", "-s", "SIGKILL", "-a", tid, check=False)
        env.ctr("tasks", "rm", "-f", tid, check=False)
    for cid in env.ctr("containers", "ls", "-q", check=False).stdout.split():
        env.ctr("containers", "rm", cid, check=False)


def _ours_runs_tasks(tmp_path: Path) -> Iterator[Ctr]:
    """Our daemon with containerd's Go runc shim, when it serves the Tasks API."""
    if not Path(GO_SHIM).exists():
        pytest.skip("no Go runc shim")
    config = tmp_path / "ours.toml"
    config.write_text(
        TEST_CONFIG
        + '[plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2"]\n'
        + f'binary = "{GO_SHIM}"\n'
    )
    (tmp_path / "ours").mkdir()
    with harness.pycontainerd(tmp_path / "ours", "--config", str(config)) as d:
        go = Ctr(d.address)
        plugins = go("plugins", "ls", check=False).stdout
        if not any(
            line.split()[:2] == ["io.containerd.grpc.v1", "tasks"] and line.split()[-1] == "ok"
            for line in plugins.splitlines()
        ):
            pytest.skip("our daemon does not serve tasks yet")
        yield go


@pytest.fixture(params=["containerd", "pycontainerd"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "containerd":
        daemons: Iterator[Ctr] = iter([request.getfixturevalue("reference")])
    else:
        daemons = _ours_runs_tasks(tmp_path)
    go = next(daemons)
    # Our daemon shares /run/containerd with other tests' shims: a namespace of our own.
    e = Env(go, f"h5{uuid.uuid4().hex[:8]}", tmp_path / "fifo", tmp_path, request.param)
    e.fifo_dir.mkdir()
    try:
        archive = tmp_path / "busybox.tar"
        files = build.busybox_files()
        files["etc/passwd"] = build.File(b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
        files["etc/group"] = build.File(b"root:x:0:\napp:x:1001:\nstaff:x:50:app\n")
        build.write_oci_archive(build.make_image(files), archive, IMAGE)
        e.ctr("images", "import", str(archive))
        yield e
    finally:
        try:
            _clean(e)
        finally:
            with contextlib.suppress(StopIteration):
                next(daemons)
            _remove_namespace_dirs(e.namespace)


def _remove_namespace_dirs(namespace: str) -> None:
    """The empty per-namespace cgroups and runc root that runc leaves behind."""
    for cgroup in Path("/sys/fs/cgroup").glob(f"*/{namespace}"):
        for child in cgroup.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    with contextlib.suppress(OSError):
        Path("/run/containerd/runc", namespace).rmdir()


def test_run_rm_prints_and_removes(env: Env) -> None:
    proc = env.pyctr("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, "r1", "echo", "hello")
    assert proc.stdout == b"hello\n"
    assert env.ctr("containers", "ls", "-q").stdout.split() == []
    assert env.ctr("snapshots", "ls").stdout.splitlines()[1:] != []  # the image's stays
    assert "r1" not in env.ctr("snapshots", "ls").stdout


def test_run_exit_code_and_stderr(env: Env) -> None:
    proc = env.pyctr(
        "run",
        "--rm",
        "--fifo-dir",
        str(env.fifo_dir),
        IMAGE,
        "r2",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
        check=False,
    )
    assert proc.returncode == 7
    assert proc.stdout == b"out\n" and proc.stderr == b"err\n"


def test_run_stdin_env_cwd_user(env: Env) -> None:
    proc = env.pyctr(
        "run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, "r3", "cat", input_bytes=b"abc\n"
    )
    assert proc.stdout == b"abc\n"
    proc = env.pyctr(
        "run",
        "--rm",
        "--fifo-dir",
        str(env.fifo_dir),
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1001",
        IMAGE,
        "r4",
        "sh",
        "-c",
        'echo "$FOO $PWD $(id -u):$(id -g) $PATH"',
    )
    assert proc.stdout == b"bar /tmp 1000:1001 /bin\n"
    # names resolve in the image's /etc/passwd and /etc/group
    fifo = ("--fifo-dir", str(env.fifo_dir))
    script = "echo $(id -u):$(id -g)"
    proc = env.pyctr("run", "--rm", *fifo, "--user", "app:staff", IMAGE, "r6", "sh", "-c", script)
    assert proc.stdout == b"1000:50\n"


def test_run_log_uri_file(env: Env) -> None:
    log = env.tmp / "out.log"
    env.pyctr("run", "--rm", "--log-uri", f"file://{log}", IMAGE, "r5", "echo", "logged")
    assert log.read_bytes() == b"logged\n"


def test_detached_task_commands(env: Env) -> None:
    fifo = ("--fifo-dir", str(env.fifo_dir))
    env.pyctr("run", "-d", *fifo, IMAGE, "d1", "sleep", "1000")
    rows = [r.split() for r in env.pyctr("tasks", "ls").stdout.decode().splitlines()]
    assert rows[0] == ["TASK", "PID", "STATUS"]
    assert rows[1][0] == "d1" and rows[1][2] == "RUNNING"
    pid = rows[1][1]
    # what Go ctr sees agrees
    assert env.ctr("tasks", "ls").stdout.splitlines()[1].split() == ["d1", pid, "RUNNING"]
    listed = json.loads(env.pyctr("tasks", "ls", "--format", "json").stdout)
    assert listed == [{"id": "d1", "pid": int(pid), "status": "RUNNING"}]

    out = env.pyctr(
        "tasks", "exec", *fifo, "--exec-id", "e1", "d1", "sh", "-c", "echo hi; exit 3", check=False
    )
    assert out.returncode == 3 and out.stdout == b"hi\n"

    env.pyctr("tasks", "exec", *fifo, "-d", "--exec-id", "e2", "d1", "sleep", "1000")
    ps = env.pyctr("tasks", "ps", "d1").stdout.decode().splitlines()
    assert ps[0].split() == ["PID", "INFO"]
    assert pid in {line.split()[0] for line in ps[1:]}
    assert any("ExecID:e2" in line for line in ps[1:])
    env.pyctr("tasks", "kill", "-s", "KILL", "--exec-id", "e2", "d1")
    env.pyctr("tasks", "rm", "--exec-id", "e2", "-f", "d1")

    env.pyctr("tasks", "pause", "d1")
    assert env.ctr("tasks", "ls").stdout.splitlines()[1].split()[2] == "PAUSED"
    env.pyctr("tasks", "resume", "d1")
    assert env.ctr("tasks", "ls").stdout.splitlines()[1].split()[2] == "RUNNING"
    metrics = json.loads(env.pyctr("tasks", "metrics", "--format", "json", "d1").stdout)
    assert metrics["id"] == "d1"

    res = env.pyctr("tasks", "rm", "d1", check=False)
    assert res.returncode == 1 and b"pyctr:" in res.stderr
    env.pyctr("tasks", "kill", "-s", "SIGKILL", "d1")
    env.pyctr("tasks", "rm", "-f", "d1")
    assert env.ctr("tasks", "ls", "-q").stdout.split() == []
    env.pyctr("containers", "rm", "d1")
    assert env.ctr("containers", "ls", "-q").stdout.split() == []


def test_containers_commands(env: Env) -> None:
    env.pyctr("containers", "create", "--label", "team=a", IMAGE, "c1", "echo", "x")
    rows = [r.split() for r in env.pyctr("containers", "ls").stdout.decode().splitlines()]
    assert rows == [["CONTAINER", "IMAGE", "RUNTIME"], ["c1", IMAGE, "io.containerd.runc.v2"]]
    stop_signal = "io.containerd.image.config.stop-signal"
    info = json.loads(env.pyctr("containers", "info", "c1").stdout)
    theirs = json.loads(env.ctr("containers", "info", "c1").stdout)
    for key in ("ID", "Image", "Labels", "SnapshotKey", "Snapshotter", "Runtime", "Spec"):
        assert info[key] == theirs[key], key
    assert info["Spec"]["process"]["args"] == ["echo", "x"]
    spec = json.loads(env.pyctr("containers", "info", "--spec", "c1").stdout)
    assert spec == theirs["Spec"]
    out = env.pyctr("containers", "label", "c1", "team=", "tier=web").stdout
    assert out == f"{stop_signal}=SIGTERM,tier=web\n".encode()
    labels = json.loads(env.ctr("containers", "info", "c1").stdout)["Labels"]
    assert labels == {"tier": "web", stop_signal: "SIGTERM"}
    # Go ctr runs what pyctr created, and pyctr runs what ctr created
    out = env.pyctr("tasks", "start", "--fifo-dir", str(env.fifo_dir), "c1").stdout
    assert out == b"x\n"
    env.ctr("containers", "create", IMAGE, "c2", "echo", "from-go")
    out = env.pyctr("tasks", "start", "--fifo-dir", str(env.fifo_dir), "c2").stdout
    assert out == b"from-go\n"
    env.pyctr("containers", "rm", "c1", "c2")
    assert env.ctr("containers", "ls", "-q").stdout.split() == []
    assert "c1" not in env.ctr("snapshots", "ls").stdout
    res = env.pyctr("containers", "info", "c1", check=False)
    assert res.returncode == 1 and b"not found" in res.stderr


@pytest.mark.parametrize(
    "flags",
    [
        (),
        ("--env", "A=1", "--env", "PATH=/x", "--cwd", "/tmp", "--label", "k=v"),
        ("--mount", "type=bind,src=/tmp,dst=/host,options=rbind:ro", "--read-only"),
        ("--net-host", "--tty", "--annotation", "a=b", "--memory-limit", "1048576"),
        ("--privileged", "--allow-new-privs"),
        ("--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_KILL"),
    ],
    ids=["defaults", "env", "mounts", "host-net-tty", "privileged", "caps"],
)
def test_spec_matches_go_ctr(env: Env, flags: tuple[str, ...]) -> None:
    """The spec ``pyctr containers create`` writes is the one ``ctr containers create`` does."""
    if flags and env.daemon != "containerd":
        pytest.skip("specs are made in the client: one daemon suffices for the flag variants")
    env.pyctr("containers", "create", *flags, IMAGE, "s1", "sh")
    env.ctr("containers", "create", *flags, IMAGE, "s2", "sh")
    ours = json.loads(env.ctr("containers", "info", "--spec", "s1").stdout)
    theirs = json.loads(env.ctr("containers", "info", "--spec", "s2").stdout)
    ours["linux"]["cgroupsPath"] = theirs["linux"]["cgroupsPath"] = ""
    assert ours == theirs
    ours_info = json.loads(env.ctr("containers", "info", "s1").stdout)
    theirs_info = json.loads(env.ctr("containers", "info", "s2").stdout)
    for key in ("Labels", "Image", "Runtime", "Snapshotter"):
        assert ours_info[key] == theirs_info[key], key


async def test_python_api(env: Env) -> None:
    async with AsyncClient(env.address, namespace=env.namespace, timeout=30) as client:
        container = await client.new_container(
            "p1", IMAGE, oci.with_env(["A=1"]), args=["sleep", "1000"]
        )
        assert container.snapshot_key == "p1" and container.image == IMAGE
        out, err = io.BytesIO(), io.BytesIO()
        task = await client.tasks.create(
            container,
            io=cio.stdio(stdout=out, stderr=err, fifo_dir=env.fifo_dir),
        )
        try:
            exited = asyncio.ensure_future(task.wait())
            await task.start()
            assert task.pid > 0
            assert (await task.status()).status == "RUNNING"
            buf = io.BytesIO()
            proc = await task.exec(
                "x1",
                {**(container.spec or {})["process"], "args": ["sh", "-c", "echo $A; exit 4"]},
                cio.stdio(stdout=buf, fifo_dir=env.fifo_dir),
            )
            await proc.start()
            status = await proc.wait()
            assert status.code == 4 and status.exited_at_ns > 0
            assert buf.getvalue() == b"1\n"
            assert (await proc.delete()).code == 4
            pids = await task.pids()
            assert [p.pid for p in pids] == [task.pid]
            await task.update({"pids": {"limit": 50}})
            pids_max = Path("/sys/fs/cgroup/pids", env.namespace, "p1", "pids.max")
            assert pids_max.read_text() == "50\n"
            await task.pause()
            assert (await task.status()).status == "PAUSED"
            await task.resume()
            metric = await task.metrics()
            assert metric.id == "p1" and metric.timestamp_ns > 0
            await task.kill("SIGKILL")
            status = await asyncio.wait_for(exited, 30)
            assert status.code == 137
            assert (await task.delete()).code == 137
            with pytest.raises(NotFound):
                await client.tasks.get("p1")
        finally:
            for t in await client.tasks.list():
                await (await client.tasks.get(t.id)).delete(force=True)
            await client.containers.delete("p1")
        assert await client.containers.list() == []
        with pytest.raises(NotFound):
            await client.new_container("p2", "docker.io/library/none:1")


def test_blocking_api_and_unpacked_check(env: Env) -> None:
    with Client(env.address, namespace=env.namespace) as client:
        out = io.BytesIO()
        container = client.new_container("b1", IMAGE, args=["echo", "blocking"])
        task = client.tasks.create(container, cio.stdio(stdout=out, fifo_dir=env.fifo_dir))
        task.start()
        assert task.wait().code == 0
        assert task.delete().code == 0
        assert out.getvalue() == b"blocking\n"
        client.containers.delete(container.id)
        with pytest.raises(FailedPrecondition, match="not unpacked"):
            client.new_container("b2", IMAGE, snapshotter="native")


def _read_to_eof(stream: IO[bytes], timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if sel.select(remaining):
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
    raise AssertionError(f"no EOF within {timeout}s; read {b''.join(chunks)!r}")


def test_run_with_terminal(env: Env) -> None:
    argv = [PYCTR, "--address", env.address, "--namespace", env.namespace, "run", "--rm", "-t"]
    argv += ["--fifo-dir", str(env.fifo_dir), IMAGE, "t1", "sh", "-c", "tty; echo ok"]
    # stdin stays open: at its EOF the shim would hang up the container's terminal
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        out = _read_to_eof(proc.stdout, timeout=60)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    # a pty turns \n into \r\n; stderr is merged into the one stream
    assert out.startswith(b"/dev/pts/") and out.endswith(b"ok\r\n")


def test_attach_to_detached_task(env: Env) -> None:
    script = "while true; do echo tick; sleep 0.1; done"
    env.pyctr("run", "-d", "--fifo-dir", str(env.fifo_dir), IMAGE, "a1", "sh", "-c", script)
    attach = subprocess.Popen(
        [PYCTR, "--address", env.address, "--namespace", env.namespace, "tasks", "attach", "a1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert attach.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(attach.stdout, selectors.EVENT_READ)
            assert sel.select(30), "no output from the attached task"
        assert attach.stdout.readline() == b"tick\n"
        env.pyctr("tasks", "kill", "-s", "KILL", "a1")
        assert attach.wait(30) == 137
    finally:
        attach.kill()
        attach.wait()
        if attach.stdout is not None:
            attach.stdout.close()
    # a task that has exited: attach returns at once with its status
    env.pyctr("run", "-d", "--fifo-dir", str(env.fifo_dir), IMAGE, "a2", "true")
    proc = env.pyctr("tasks", "attach", "a2")
    assert proc.returncode == 0 and proc.stdout == b""


def _with_config_user(img: build.Image, user: str) -> build.Image:
    """The image with ``User`` set in its config (new config and manifest blobs)."""
    config = json.loads(img.config)
    config["config"]["User"] = user
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = json.loads(img.manifest)
    manifest["config"]["digest"] = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest["config"]["size"] = len(config_bytes)
    out = build.Image(img.layers, config_bytes, json.dumps(manifest, sort_keys=True).encode())
    out.blobs = {layer.digest: layer.gz for layer in img.layers}
    out.blobs[out.config_digest] = out.config
    out.blobs[out.manifest_digest] = out.manifest
    return out


def test_image_user_from_config(env: Env) -> None:
    base = build.busybox_files()
    base["etc/passwd"] = build.File(b"root:x:0:0::/root:/bin/sh\n")
    top = {
        "etc": build.File(mode=0o755, directory=True),
        "etc/passwd": build.File(b"root:x:0:0::/root:/bin/sh\nsvc:x:7:8::/:/bin/sh\n"),
        "etc/group": build.File(b"svc:x:8:\nextra:x:9:svc\n"),
    }
    ref = "docker.io/library/pyctr-user:1"
    archive = env.tmp / "user.tar"
    build.write_oci_archive(_with_config_user(build.make_image([base, top]), "svc"), archive, ref)
    env.ctr("images", "import", str(archive))
    with Client(env.address, namespace=env.namespace) as client:
        container = client.new_container("u1", ref, args=["id"])
        assert container.spec is not None
        assert container.spec["process"]["user"] == {"uid": 7, "gid": 8, "additionalGids": [8, 9]}
        out = io.BytesIO()
        task = client.tasks.create(container, cio.stdio(stdout=out, fifo_dir=env.fifo_dir))
        task.start()
        assert task.wait().code == 0
        task.delete()
        client.containers.delete("u1")
    assert out.getvalue() == b"uid=7(svc) gid=8(svc) groups=8(svc),9(extra)\n"
    # Go ctr makes the same spec from the same image
    env.ctr("containers", "create", ref, "u2", "id")
    theirs = json.loads(env.ctr("containers", "info", "--spec", "u2").stdout)
    assert theirs["process"]["user"] == container.spec["process"]["user"]
