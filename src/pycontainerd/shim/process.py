"""Init and exec processes of a container: status, exit status and time, stdio."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from pycontainerd._api.containerd.types.task import task_pb2 as task_types
from pycontainerd.shim.io import ProcessIO

CREATED = task_types.CREATED
RUNNING = task_types.RUNNING
STOPPED = task_types.STOPPED
PAUSED = task_types.PAUSED


@dataclass(eq=False)
class Process:
    """One process; ``exec_id`` is empty for the container's init."""

    container_id: str
    exec_id: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    spec: bytes = b""  # an exec's runtime-spec Process JSON
    pid: int = 0
    status: task_types.Status.ValueType = CREATED
    exit_status: int = 0
    exited_at: timestamp_pb2.Timestamp | None = None
    io: ProcessIO | None = None
    console: object | None = None  # a pycontainerd.shim.console.Console for terminals
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once TaskStart/TaskExecStarted is published (or start failed): the exit
    # event must never overtake it.
    start_published: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.exec_id or self.container_id

    def set_exited(self, code: int) -> None:
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        self.exit_status = code
        self.exited_at = stamp
        self.status = STOPPED
        self.exited.set()

    @property
    def current_status(self) -> task_types.Status.ValueType:
        return STOPPED if self.exited.is_set() else self.status
