"""Runtimes: what runs a container's processes for the Tasks service.

The only runtime is v2 (``pycontainerd.runtime.v2``): one shim process per task (or
per group of tasks), spoken to over ttrpc with the ``containerd.task.v2.Task`` API.
This module holds the values the runtime and the Tasks service share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import any_pb2

from pycontainerd._api.containerd.types import mount_pb2


@dataclass(frozen=True, slots=True)
class IO:
    """Where a process's stdio goes: fifo paths or URIs the shim understands."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class CreateOpts:
    """Everything the runtime needs to create a task (containerd's runtime.CreateOpts).

    ``spec`` is the container's OCI spec JSON, written as the bundle's config.json.
    ``runtime`` is a runtime name (``io.containerd.runc.v2``) or an absolute shim path.
    ``task_options`` (from the create request) win over ``runtime_options`` (from the
    container) when the shim is started and the task created.
    """

    spec: bytes
    runtime: str
    rootfs: tuple[mount_pb2.Mount, ...] = ()
    io: IO = field(default_factory=IO)
    runtime_options: any_pb2.Any | None = None
    task_options: any_pb2.Any | None = None
    checkpoint: str = ""

    @property
    def options(self) -> any_pb2.Any | None:
        return self.task_options if self.task_options is not None else self.runtime_options


@dataclass(frozen=True, slots=True)
class Exit:
    """How a process ended: its pid, exit status and when (ns since the epoch)."""

    pid: int
    status: int
    timestamp_ns: int
