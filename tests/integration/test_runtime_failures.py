"""Issue 6 "done means" gaps: restart at scale with our shim (more to come)."""

from __future__ import annotations

import pytest

from pycontainerd import harness
from tests.integration.test_tasks import (
    PY_SHIM,
    Env,
    _mounts_under,
    env,
    events,
    run_detached,
)

__all__ = ["env"]  # the parametrised fixture, reused from test_tasks

CONTAINERS = 20


def test_restart_after_kill9_with_twenty_running(env: Env) -> None:
    if env.shim != PY_SHIM:
        pytest.skip("the brief asks for this with our shim; test_tasks covers the Go shim")
    ids = [run_detached(env, "sleep", "1000") for _ in range(CONTAINERS)]
    before = env.tasks()
    assert {c: s for c, (_, s) in before.items()} == dict.fromkeys(ids, "RUNNING")

    env.restart(kill=True)
    assert env.tasks() == before  # same pids, all still RUNNING
    with events(env) as ev:
        for n, cid in enumerate(ids):
            res = env("task", "exec", "--exec-id", f"x{n}", "--fifo-dir", str(env.fifo_dir),
                      cid, "echo", cid)  # fmt: skip
            assert res.stdout == f"{cid}\n"
            env("task", "kill", "-s", "SIGKILL", cid)
        for cid in ids:
            line = ev.wait_for("/tasks/exit", f'"id":"{cid}"', timeout=60)
            assert '"exit_status":137' in line.replace(" ", "")
        for cid in ids:
            env("task", "delete", cid)
    assert env.tasks() == {}
    assert harness.shim_pids(env.daemon.address) == []
    for cid in ids:
        assert not env.bundle(cid).exists()
        assert _mounts_under(env.bundle(cid)) == []
