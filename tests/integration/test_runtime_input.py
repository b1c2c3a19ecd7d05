"""Issue 6 "done means" with our shim on our daemon: ``ctr shim`` talks to the shim
directly, shim groups, bad input (clear errors, nothing left behind) and the runc
options' ``BinaryName`` (a recording stand-in for crun, which cannot run here).

Each test starts its own daemon whose ``io.containerd.runc.v2`` is our shim; the
clean-up of test_tasks kills what a failure left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2, field_mask_pb2

from pycontainerd import harness
from pycontainerd._api.containerd.services.containers.v1 import containers_pb2 as cpb
from pycontainerd._api.containerd.services.containers.v1 import containers_pb2_grpc as cgrpc
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2 as tpb
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2_grpc as tgrpc
from pycontainerd.client import Client
from pycontainerd.errdefs import InvalidArgument, NotFound
from tests.integration.test_tasks import (
    IMAGE,
    PY_SHIM,
    Env,
    _cleanup,
    _import_busybox,
    _mounts_under,
    _start,
    config_for,
    events,
    run_detached,
)

pytestmark = pytest.mark.skipif(PY_SHIM is None, reason="our shim is not installed")

GROUP_ANNOTATION = "io.containerd.runc.v2.group"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


@contextlib.contextmanager
def _daemon(base: Path, extra_config: str = "") -> Iterator[Env]:
    """Our daemon with our shim for io.containerd.runc.v2 (plus ``extra_config``)."""
    assert PY_SHIM is not None
    config = base / "config.toml"
    config.write_text(config_for(PY_SHIM) + extra_config)
    fifo_dir = base / "fifo"
    fifo_dir.mkdir()
    namespace = f"t{uuid.uuid4().hex[:8]}"
    env = Env(base, config, _start(base, config), namespace, fifo_dir, PY_SHIM)
    try:
        _import_busybox(env)
        yield env
    finally:
        try:
            _cleanup(env)
        finally:
            env.daemon.stop()


@pytest.fixture
def env() -> Iterator[Env]:
    # A short base, like /run/pycontainerd: the shim then serves from <state>/s (with
    # pytest's long tmp_path it falls back to /run/containerd/s, where ctr shim looks).
    base = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        with _daemon(base) as e:
            yield e
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _runc_containers(env: Env) -> list[str]:
    """The containers runc knows in our namespace's root (containerd's default)."""
    res = subprocess.run(
        ["runc", "--root", f"/run/containerd/runc/{env.namespace}", "list", "-q"],
        capture_output=True,
        text=True,
    )
    return res.stdout.split()


def _assert_nothing_left(env: Env, cid: str) -> None:
    assert cid not in env.tasks()
    assert not env.bundle(cid).exists()
    assert _mounts_under(env.daemon.state) == []
    assert _mounts_under(env.daemon.root) == []
    assert harness.shim_pids(env.daemon.address, cid) == []
    assert cid not in _runc_containers(env)


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    """Wait for a process that is not our child to exit (a pidfd polls readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still running after {timeout}s"
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_and_delete(env: Env, cid: str) -> None:
    with events(env) as ev:
        env("task", "kill", "-s", "SIGKILL", cid)
        ev.wait_for("/tasks/exit", f'"id":"{cid}"')
    env("task", "delete", cid)


# -- ctr shim ----------------------------------------------------------------------


def _ctr_shim_state(env: Env, cid: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(env("shim", "--id", cid, "state").stdout)
    return state


def test_ctr_shim_state_talks_to_our_shim(env: Env) -> None:
    cid = run_detached(env, "sleep", "1000")
    pid, status = env.tasks()[cid]
    assert status == "RUNNING"
    state = _ctr_shim_state(env, cid)
    assert state["id"] == cid
    assert str(state["pid"]) == pid
    # ctr prints the shim's StateResponse as JSON: status 2 is RUNNING
    assert state["status"] in (2, "RUNNING")
    assert state["bundle"] == str(env.bundle(cid))
    # a restarted daemon's tasks are reachable too
    env.restart(kill=True)
    assert _ctr_shim_state(env, cid)["pid"] == state["pid"]

    _kill_and_delete(env, cid)
    _assert_nothing_left(env, cid)
    res = env("shim", "--id", cid, "state", check=False)
    assert res.returncode != 0
    # (a shim still shutting down may answer that it forgot the container)
    assert f"fail to connect to container {cid}'s shim" in res.stderr or (
        "does not exist" in res.stderr
    ), res.stderr
    # the link the daemon made for ctr went with the task
    assert not os.path.lexists(_ctr_shim_link(env, cid))


def test_ctr_shim_link_goes_with_a_killed_shim(env: Env) -> None:
    cid = run_detached(env, "sleep", "1000")
    assert _ctr_shim_state(env, cid)["id"] == cid
    shim_pid = int(env.bundle(cid).joinpath("shim.pid").read_text())
    with events(env) as ev:
        os.kill(shim_pid, signal.SIGKILL)
        ev.wait_for("/tasks/delete", cid)
    _assert_nothing_left(env, cid)
    assert not os.path.lexists(_ctr_shim_link(env, cid))


def _ctr_shim_link(env: Env, cid: str) -> Path:
    """Where ctr shim dials: /run/containerd/s/<sha256(address/ns/id)>."""
    key = f"{env.daemon.address}/{env.namespace}/{cid}"
    return Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest()


# -- shim groups -------------------------------------------------------------------


def test_shim_group_shares_one_process(env: Env) -> None:
    first, second = env.new_id(), env.new_id()
    for cid in (first, second):
        env("run", "-d", "--null-io", f"--annotation={GROUP_ANNOTATION}=g1", IMAGE, cid,
            "sleep", "1000")  # fmt: skip
    # one server: both bundles name the same socket; only the first started one
    address = env.bundle(first).joinpath("address").read_text()
    assert env.bundle(second).joinpath("address").read_text() == address
    shim_pid = int(env.bundle(first).joinpath("shim.pid").read_text())
    if env.bundle(second).joinpath("shim.pid").exists():
        assert int(env.bundle(second).joinpath("shim.pid").read_text()) == shim_pid
    assert _alive(shim_pid)
    assert {c: s for c, (_, s) in env.tasks().items()} == {first: "RUNNING", second: "RUNNING"}

    # ctr shim reaches each task of the group through the one server
    for cid in (first, second):
        assert str(_ctr_shim_state(env, cid)["pid"]) == env.tasks()[cid][0]

    _kill_and_delete(env, first)
    # the other task still needs the shim
    assert _alive(shim_pid)
    assert env.tasks()[second][1] == "RUNNING"
    assert _ctr_shim_state(env, second)["id"] == second
    res = env("task", "exec", "--exec-id", "e1", "--fifo-dir", str(env.fifo_dir), second,
              "echo", "still served")  # fmt: skip
    assert res.stdout == "still served\n"

    _kill_and_delete(env, second)
    _wait_gone(shim_pid)
    for cid in (first, second):
        _assert_nothing_left(env, cid)


@contextlib.contextmanager
def _pooling_daemon(containers_per_shim: int) -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    extra = '[plugins."io.containerd.runtime.v2.task"]\n'
    extra += f"containers_per_shim = {containers_per_shim}\n"
    try:
        with _daemon(base, extra) as e:
            yield e
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _shim_pid(env: Env, cid: str) -> int:
    return int(env.bundle(cid).joinpath("shim.pid").read_text())


def test_ungrouped_containers_share_pooled_shims_up_to_the_bound() -> None:
    """Without a group, containers share a shim process up to ``containers_per_shim``;
    a shim killed with -9 takes exactly its own containers down, each cleaned up."""
    with _pooling_daemon(2) as env:
        first, second, third = (run_detached(env, "sleep", "1000") for _ in range(3))
        pooled = _shim_pid(env, first)
        other = _shim_pid(env, third)
        assert _shim_pid(env, second) == pooled and other != pooled
        address = env.bundle(first).joinpath("address").read_text()
        assert env.bundle(second).joinpath("address").read_text() == address

        _kill_and_delete(env, first)  # its place is free; the shim serves second
        assert _alive(pooled)
        res = env("task", "exec", "--exec-id", "e1", "--fifo-dir", str(env.fifo_dir), second,
                  "echo", "still served")  # fmt: skip
        assert res.stdout == "still served\n"
        # one place in each shim: no third shim
        fourth, fifth = (run_detached(env, "sleep", "1000") for _ in range(2))
        assert {_shim_pid(env, fourth), _shim_pid(env, fifth)} == {pooled, other}
        on_pooled = [c for c in (second, fourth, fifth) if _shim_pid(env, c) == pooled]
        survivor = fourth if _shim_pid(env, fourth) == other else fifth
        for cid in (second, fourth, fifth):
            assert _ctr_shim_state(env, cid)["id"] == cid
        # A pod's sandbox names itself as the group: it is not pooled, and the pod's
        # containers join its shim.
        sandbox, member = env.new_id(), env.new_id()
        for cid in (sandbox, member):
            env("run", "-d", "--null-io", f"--annotation=io.kubernetes.cri.sandbox-id={sandbox}",
                IMAGE, cid, "sleep", "1000")  # fmt: skip
        pod_shim = _shim_pid(env, sandbox)
        assert pod_shim not in (pooled, other)
        pod_address = env.bundle(sandbox).joinpath("address").read_text()
        assert env.bundle(member).joinpath("address").read_text() == pod_address
        for cid in (member, sandbox):
            _kill_and_delete(env, cid)
        _wait_gone(pod_shim)

        with events(env) as ev:
            os.kill(pooled, signal.SIGKILL)
            for cid in on_pooled:
                ev.wait_for("/tasks/delete", cid)
        _wait_gone(pooled)
        tasks = env.tasks()
        # the other shim's containers are untouched
        assert {c: s for c, (_, s) in tasks.items()} == {third: "RUNNING", survivor: "RUNNING"}
        for cid in on_pooled:
            assert not env.bundle(cid).exists()
        for cid in (third, survivor):
            _kill_and_delete(env, cid)
        _wait_gone(other)
        for cid in (first, second, third, fourth, fifth):
            _assert_nothing_left(env, cid)


def test_one_container_per_shim_when_configured() -> None:
    with _pooling_daemon(1) as env:
        ids = [run_detached(env, "sleep", "1000") for _ in range(2)]
        pids = {_shim_pid(env, c) for c in ids}
        assert len(pids) == 2
        for cid in ids:
            _kill_and_delete(env, cid)
        for pid in pids:
            _wait_gone(pid)


# -- bad input ---------------------------------------------------------------------


def _update_spec(env: Env, cid: str, spec: bytes) -> None:
    """Replace a container's spec with raw bytes, as any gRPC client could."""
    req = cpb.UpdateContainerRequest(
        container=cpb.Container(id=cid, spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=spec)),
        update_mask=field_mask_pb2.FieldMask(paths=["spec"]),
    )
    with Client(str(env.daemon.address), namespace=env.namespace) as client:

        async def update() -> None:
            # the channel belongs to the client's loop: make the stub there
            await client.aio.call(cgrpc.ContainersStub(client.aio.channel).Update, req)

        client.run(update())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # runc refuses a process without args: its own words reach the user
        (
            {
                "ociVersion": "1.0.2",
                "process": {"args": [], "cwd": "/"},
                "root": {"path": "rootfs"},
            },
            "args must not be empty",
        ),
        (
            {"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/"}},
            "root must be specified",
        ),
    ],
    ids=["empty-args", "no-root"],
)
def test_invalid_spec_passes_runc_error_through(
    env: Env, spec: dict[str, object], expected: str
) -> None:
    cid = env.new_id()
    env("containers", "create", IMAGE, cid, "true")
    _update_spec(env, cid, json.dumps(spec).encode())
    res = env("task", "start", cid, check=False)
    assert res.returncode != 0
    assert "runc create failed" in res.stderr or "OCI runtime create failed" in res.stderr
    assert expected in res.stderr, res.stderr
    _assert_nothing_left(env, cid)


def test_garbage_spec_is_invalid_argument(env: Env) -> None:
    cid = env.new_id()
    env("containers", "create", IMAGE, cid, "true")
    _update_spec(env, cid, b"\x00{not json")
    # ctr decodes the spec itself before asking for a task
    res = env("task", "start", cid, check=False)
    assert res.returncode != 0
    assert "invalid character" in res.stderr, res.stderr
    # so does our client library, and the daemon itself, before making a bundle
    with Client(str(env.daemon.address), namespace=env.namespace) as client:
        with pytest.raises(InvalidArgument, match="spec is not JSON"):
            client.tasks.create(cid)

        async def create() -> None:
            stub = tgrpc.TasksStub(client.aio.channel)
            await client.aio.call(stub.Create, tpb.CreateTaskRequest(container_id=cid))

        with pytest.raises(InvalidArgument, match="spec is not valid JSON"):
            client.run(create())
    _assert_nothing_left(env, cid)


def test_missing_snapshot_is_not_found(env: Env) -> None:
    cid = env.new_id()
    env("containers", "create", IMAGE, cid, "true")
    env("snapshots", "rm", cid)
    res = env("task", "start", cid, check=False)
    assert res.returncode != 0
    assert "not found" in res.stderr and cid in res.stderr, res.stderr
    _assert_nothing_left(env, cid)


def test_missing_snapshot_through_the_client(env: Env) -> None:
    """A container record whose snapshot key names nothing: the client's task create
    fails with NotFound before the daemon makes a bundle."""
    cid = env.new_id()
    with Client(str(env.daemon.address), namespace=env.namespace) as client:
        client.containers.create(
            cid,
            spec={
                "ociVersion": "1.0.2",
                "process": {"args": ["true"], "cwd": "/"},
                "root": {"path": "rootfs"},
            },
            snapshotter="overlayfs",
            snapshot_key="nosuchkey",
        )
        with pytest.raises(NotFound, match="nosuchkey"):
            client.tasks.create(cid)
    _assert_nothing_left(env, cid)


def test_missing_command_is_runc_error_and_leaves_nothing(env: Env) -> None:
    cid = env.new_id()
    res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, cid, "/no/such/binary",
              check=False)  # fmt: skip
    assert res.returncode != 0
    assert 'exec: "/no/such/binary": stat /no/such/binary: no such file or directory' in (
        res.stderr
    ), res.stderr
    _assert_nothing_left(env, cid)
    cid = env.new_id()
    res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, cid, "nosuchcommand",
              check=False)  # fmt: skip
    assert res.returncode != 0
    assert 'exec: "nosuchcommand": executable file not found in $PATH' in res.stderr, res.stderr
    _assert_nothing_left(env, cid)


def test_unknown_runtime_is_clear_and_leaves_nothing(env: Env) -> None:
    cid = env.new_id()
    res = env("run", "--rm", "--runtime", "io.containerd.nosuch.v1", IMAGE, cid, "true",
              check=False)  # fmt: skip
    assert res.returncode != 0
    assert 'runtime "io.containerd.nosuch.v1" binary not installed "containerd-shim-nosuch-v1"' in (
        res.stderr
    ), res.stderr
    _assert_nothing_left(env, cid)


# Each leaves a helper behind in its session (its pid in <binary>.helper), as a shim
# that forked its server before failing would.
HELPER = 'sleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > "$0.helper"\n'
GARBAGE_SHIMS = {
    "io.containerd.garbage.v1": f"#!/bin/sh\n{HELPER}echo 'hello, I am not a shim'\nexit 0\n",
    "io.containerd.failing.v1": f"#!/bin/sh\n{HELPER}echo 'cannot start: no cgroups' >&2\nexit 3\n",
    "io.containerd.badjson.v1": f'#!/bin/sh\n{HELPER}echo \'{{"version": 2, "address": 7}}\'\n',
    "io.containerd.nosocket.v1": "#!/bin/sh\necho unix:///nonexistent/shim.sock\nexit 0\n",
}


@pytest.fixture
def garbage_env(tmp_path: Path) -> Iterator[Env]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    config = ""
    for runtime, script in GARBAGE_SHIMS.items():
        path = bin_dir / runtime.replace(".", "-")
        path.write_text(script)
        path.chmod(0o755)
        config += (
            f'[plugins."io.containerd.runtime.v2.task".runtimes."{runtime}"]\nbinary = "{path}"\n'
        )
    try:
        with _daemon(tmp_path, config) as e:
            yield e
    finally:
        for helper in bin_dir.glob("*.helper"):  # left only if a test failed
            pid = int(helper.read_text())
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00":
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("io.containerd.garbage.v1", "printed 'hello, I am not a shim' instead of its address"),
        ("io.containerd.failing.v1", "cannot start: no cgroups: exit status 3"),
        ("io.containerd.badjson.v1", "shim printed JSON without an address"),
        ("io.containerd.nosocket.v1", "connect /nonexistent/shim.sock"),
    ],
)
def test_garbage_shim_start_is_clear(garbage_env: Env, runtime: str, expected: str) -> None:
    env = garbage_env
    cid = env.new_id()
    res = env("run", "--rm", "--runtime", runtime, "--fifo-dir", str(env.fifo_dir), IMAGE,
              cid, "true", check=False)  # fmt: skip
    assert res.returncode != 0
    assert "failed to start shim" in res.stderr, res.stderr
    binary = env.base / "bin" / runtime.replace(".", "-")
    assert f"{binary} start: " in res.stderr  # the binary is named
    assert expected in res.stderr, res.stderr
    _assert_nothing_left(env, cid)
    helper = Path(f"{binary}.helper")
    if helper.exists():
        _wait_gone(int(helper.read_text()))  # killed with the shim's session
    # the daemon still runs tasks afterwards
    ok = env.new_id()
    res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, ok, "echo", "fine")
    assert res.stdout == "fine\n"


# -- BinaryName --------------------------------------------------------------------

FAKE_CRUN = """#!/bin/sh
# A stand-in for crun: record the argv, then let runc do the work.
printf '%s\\n' "$*" >> "{record}"
exec /usr/sbin/runc "$@"
"""


def test_binary_name_option_runs_the_stand_in(tmp_path: Path) -> None:
    record = tmp_path / "fake-crun.argv"
    fake = tmp_path / "fake-crun"
    fake.write_text(FAKE_CRUN.format(record=record))
    fake.chmod(0o755)
    extra = (
        '[plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2".options]\n'
        f'BinaryName = "{fake}"\n'
    )
    with _daemon(tmp_path, extra) as env:
        cid = env.new_id()
        res = env("run", "--rm", "--fifo-dir", str(env.fifo_dir), IMAGE, cid, "echo", "via crun")
        assert res.stdout == "via crun\n"
        _assert_nothing_left(env, cid)
        calls = record.read_text().splitlines()
        verbs = [_verb(c) for c in calls]
        for verb in ("create", "start", "delete"):
            assert verb in verbs, calls
        assert all(f"--root /run/containerd/runc/{env.namespace}" in c for c in calls), calls
        assert any(c.endswith(cid) for c in calls if _verb(c) == "create")

        # ctr's own --runc-binary (the container's options) wins over the config
        record.unlink()
        cid = env.new_id()
        res = env("run", "--rm", "--runc-binary", "/usr/sbin/runc", "--fifo-dir",
                  str(env.fifo_dir), IMAGE, cid, "echo", "plain")  # fmt: skip
        assert res.stdout == "plain\n"
        assert not record.exists()


def _verb(argv: str) -> str:
    """The runc command word of a recorded argv (after the global flags)."""
    words = argv.split()
    i = 0
    while i < len(words) and words[i].startswith("-"):
        i += 1 if words[i] == "--systemd-cgroup" else 2
    return words[i] if i < len(words) else ""
