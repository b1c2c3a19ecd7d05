"""runc argument lists, error messages from its JSON log, and the reaper-driven runner."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pycontainerd import errdefs
from pycontainerd.shim.reaper import Reaper, exit_code
from pycontainerd.shim.runc import (
    Runc,
    RuncConfig,
    checkpoint_args,
    config_for,
    create_args,
    error_for,
    exec_args,
    kill_args,
    last_error,
)


def test_config_defaults_as_containerd(tmp_path: Path) -> None:
    config = config_for("ns", tmp_path)
    assert config.command("start", "c") == [
        "runc", "--root", "/run/containerd/runc/ns", "--log", str(tmp_path / "log.json"),
        "--log-format", "json", "start", "c",
    ]  # fmt: skip
    custom = config_for("ns", tmp_path, "crun", "/r", systemd=True)
    assert custom.command()[:3] == ["crun", "--root", "/r"]
    assert "--systemd-cgroup" in custom.command()


def test_argument_lists() -> None:
    assert create_args("/b", "/b/init.pid", "c", console_socket="/s", no_pivot=True) == [
        "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/s",
        "--no-pivot", "c",
    ]  # fmt: skip
    assert exec_args("/p.json", "/e.pid", "c") == [
        "exec", "--process", "/p.json", "--detach", "--pid-file", "/e.pid", "c",
    ]  # fmt: skip
    assert kill_args("c", 9, all_processes=True) == ["kill", "--all", "c", "9"]
    assert checkpoint_args("c", "/img", leave_running=True) == [
        "checkpoint", "--image-path", "/img", "--leave-running", "c",
    ]  # fmt: skip


def test_last_error_reads_runcs_json_log() -> None:
    log = "\n".join(
        [
            json.dumps({"level": "warning", "msg": "w"}),
            json.dumps({"level": "error", "msg": 'container "c" does not exist'}),
            "not json",
        ]
    )
    assert last_error(log) == 'container "c" does not exist'
    assert last_error("") == ""


def test_error_kinds() -> None:
    assert isinstance(error_for('container "c" does not exist'), errdefs.NotFound)
    assert isinstance(error_for("container is not running"), errdefs.FailedPrecondition)
    assert isinstance(error_for("boom"), errdefs.Unknown)


def test_exit_code_of_signals() -> None:
    assert exit_code(3 << 8) == 3
    assert exit_code(9) == 128 + 9


async def test_reaper_runs_and_reaps(tmp_path: Path) -> None:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    try:
        code, out = await reaper.run(
            [sys.executable, "-c", "import sys; print(sys.stdin.read()); sys.exit(4)"],
            input_bytes=b"in",
            stdout=subprocess.PIPE,
        )
        assert (code, out) == (4, b"in\n")
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)


async def test_runc_failure_carries_the_logged_message(tmp_path: Path) -> None:
    fake = tmp_path / "fake-runc"
    # A stand-in for runc: logs an error entry to --log (argv[4]) and fails.
    fake.write_text(
        "#!/bin/sh\n"
        'printf \'{"level":"error","msg":"container \\"x\\" does not exist"}\\n\' >> "$4"\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    try:
        runc = Runc(RuncConfig(str(fake), str(tmp_path), str(tmp_path / "log.json")), reaper)
        with pytest.raises(errdefs.NotFound, match='container "x" does not exist'):
            await runc.start("x")
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
