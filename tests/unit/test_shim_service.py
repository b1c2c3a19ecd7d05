"""The Task service's process state machine and events, with a stand-in for runc
(a shell script), as a subreaper like the real shim. No root needed."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.protobuf import message as pb_message

from pycontainerd import errdefs, typeurl
from pycontainerd._api.containerd.events import task_pb2 as events
from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2 as pb
from pycontainerd._api.containerd.types.runc.options import oci_pb2
from pycontainerd.shim import process as states
from pycontainerd.shim.publish import Publisher
from pycontainerd.shim.reaper import Reaper, set_subreaper
from pycontainerd.shim.service import TaskService
from pycontainerd.ttrpc import RequestContext

# Global flags are --root R --log L --log-format json: the command is $7. Processes are
# started from a subshell that exits at once, so that they are re-parented to the
# subreaper as runc's are, and no shell reaps them first.
FAKE_RUNC = """#!/bin/sh
root="$2"; log="$4"; shift 6
cmd="$1"; shift
for last; do :; done
case "$cmd" in
create)
    (sleep 1000 & echo $! > "$root/$last.pid"); cp "$root/$last.pid" "$4" ;;
exec)
    (sh -c 'exit 5' & echo $! > "$5") ;;
start|pause|resume) ;;
kill)
    kill -"$2" "$(cat "$root/$1.pid")" ;;
delete)
    kill -9 "$(cat "$root/$last.pid")" 2>/dev/null; rm -f "$root/$last.pid" ;;
ps)
    printf '[%s]' "$(cat "$root/$last.pid")" ;;
*)
    printf '{"level":"error","msg":"unknown command %s"}\\n' "$cmd" >> "$log"; exit 1 ;;
esac
"""


class Recorder(Publisher):
    def __init__(self) -> None:
        self.events: list[pb_message.Message] = []

    def publish(self, namespace: str, event: pb_message.Message) -> None:
        self.events.append(event)


@dataclass
class Harness:
    service: TaskService
    recorder: Recorder
    bundle: Path
    ctx: RequestContext
    options: any_pb2.Any
    left: asyncio.Event  # set when the service asks the shim to exit


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    runc = tmp_path / "runc"
    runc.write_text(FAKE_RUNC)
    runc.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    loop = asyncio.get_running_loop()
    set_subreaper()
    reaper = Reaper()
    reaper.install(loop)
    recorder = Recorder()
    left = asyncio.Event()
    service = TaskService("ns", reaper, recorder, left.set)
    options = typeurl.marshal_any(oci_pb2.Options(binary_name=str(runc), root=str(tmp_path)))
    ctx = RequestContext(metadata={}, deadline=None)
    await service.create(pb.CreateTaskRequest(id="c", bundle=str(bundle), options=options), ctx)
    try:
        yield Harness(service, recorder, bundle, ctx, options, left)
    finally:
        for container in list(service.containers.values()):
            if container.init.pid and not container.init.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(container.init.pid, signal.SIGKILL)
        loop.remove_signal_handler(signal.SIGCHLD)
        ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER off


async def test_init_lifecycle_and_event_order(harness: Harness) -> None:
    service, ctx = harness.service, harness.ctx
    state = await service.state(pb.StateRequest(id="c"), ctx)
    assert state.status == states.CREATED and state.pid > 0
    assert json.loads((harness.bundle / "options.json").read_text())["binary_name"]

    started = await service.start(pb.StartRequest(id="c"), ctx)
    assert started.pid == state.pid
    pids = await service.pids(pb.PidsRequest(id="c"), ctx)
    assert [p.pid for p in pids.processes] == [state.pid]
    await service.pause(pb.PauseRequest(id="c"), ctx)
    assert (await service.state(pb.StateRequest(id="c"), ctx)).status == states.PAUSED
    await service.resume(pb.ResumeRequest(id="c"), ctx)

    await service.kill(pb.KillRequest(id="c", signal=signal.SIGKILL), ctx)
    waited = await asyncio.wait_for(service.wait(pb.WaitRequest(id="c"), ctx), 10)
    assert waited.exit_status == 137 and waited.exited_at.seconds > 0
    with pytest.raises(errdefs.NotFound, match="already finished"):
        await service.kill(pb.KillRequest(id="c", signal=9), ctx)

    deleted = await service.delete(pb.DeleteRequest(id="c"), ctx)
    assert (deleted.pid, deleted.exit_status) == (state.pid, 137)
    with pytest.raises(errdefs.NotFound):
        await service.state(pb.StateRequest(id="c"), ctx)
    kinds = [type(e) for e in harness.recorder.events]
    assert kinds == [
        events.TaskCreate, events.TaskStart, events.TaskPaused, events.TaskResumed,
        events.TaskExit, events.TaskDelete,
    ]  # fmt: skip


async def test_exec_exit_status(harness: Harness) -> None:
    service, ctx = harness.service, harness.ctx
    await service.start(pb.StartRequest(id="c"), ctx)
    spec = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                       value=b'{"args":["true"]}')  # fmt: skip
    await service.exec(pb.ExecProcessRequest(id="c", exec_id="e", spec=spec), ctx)
    with pytest.raises(errdefs.AlreadyExists):
        await service.exec(pb.ExecProcessRequest(id="c", exec_id="e", spec=spec), ctx)
    await service.start(pb.StartRequest(id="c", exec_id="e"), ctx)
    waited = await asyncio.wait_for(service.wait(pb.WaitRequest(id="c", exec_id="e"), ctx), 10)
    assert waited.exit_status == 5
    await service.delete(pb.DeleteRequest(id="c", exec_id="e"), ctx)
    exits = [e for e in harness.recorder.events if isinstance(e, events.TaskExit)]
    assert [(e.id, e.exit_status) for e in exits] == [("e", 5)]
    with pytest.raises(errdefs.FailedPrecondition):
        await service.delete(pb.DeleteRequest(id="c"), ctx)  # init still running


async def test_runc_error_message_passes_through(harness: Harness) -> None:
    with pytest.raises(errdefs.Unknown, match="unknown command update"):
        await harness.service.update(pb.UpdateTaskRequest(id="c"), harness.ctx)


async def _next_turn() -> None:
    """Lets callbacks already scheduled with call_soon run (they run in order)."""
    await asyncio.sleep(0)


async def test_pooled_places_are_promised_up_to_the_limit(harness: Harness) -> None:
    service, ctx = harness.service, harness.ctx
    assert service.reserve("d", limit=3) and service.reserve("d", limit=3)  # once
    assert service.reserve("e", limit=3)
    assert not service.reserve("f", limit=3)  # c, d and e
    bundle_d = harness.bundle.parent / "d"
    bundle_d.mkdir()
    request = pb.CreateTaskRequest(id="d", bundle=str(bundle_d), options=harness.options)
    await service.create(request, ctx)
    assert not service.reserve("f", limit=3)  # d took its own place
    for cid in ("c", "d"):
        await service.delete(pb.DeleteRequest(id=cid), ctx)
    await service.shutdown(pb.ShutdownRequest(), ctx)
    await _next_turn()
    assert not harness.left.is_set()  # e's Create is still on its way


async def test_an_unused_promise_is_given_back_and_the_idle_shim_leaves(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pycontainerd.shim import service as service_module

    service, ctx = harness.service, harness.ctx
    await service.delete(pb.DeleteRequest(id="c"), ctx)
    monkeypatch.setattr(service_module, "RESERVATION_SECONDS", 0.2)
    assert service.reserve("e", limit=2)
    await service.shutdown(pb.ShutdownRequest(), ctx)
    await _next_turn()
    assert not harness.left.is_set()
    await asyncio.wait_for(harness.left.wait(), 10)  # e never came
    assert not service.reserve("f", limit=2)  # leaving: no more places
