"""The Python client for containerd-style daemons (pycontainerd or containerd).

``AsyncClient(address, namespace=...)`` for asyncio code, ``Client`` for blocking code:
the same calls, talking gRPC on the daemon's unix socket. Errors come back as
``pycontainerd.errdefs`` kinds (``NotFound``, ``AlreadyExists`` …) carrying the daemon's
message.
"""

from pycontainerd.client.aio import (
    AsyncAPI,
    AsyncClient,
    EventEnvelope,
    Namespace,
    PluginInfo,
    ServerVersion,
)
from pycontainerd.client.blocking import Client
from pycontainerd.client.containers import Container, ContainersAPI
from pycontainerd.client.tasks import ExitStatus, Process, ProcessState, Task, TasksAPI
from pycontainerd.client.types import Descriptor, Image

__all__ = [
    "AsyncAPI",
    "AsyncClient",
    "Client",
    "Container",
    "ContainersAPI",
    "Descriptor",
    "EventEnvelope",
    "ExitStatus",
    "Image",
    "Namespace",
    "PluginInfo",
    "Process",
    "ProcessState",
    "ServerVersion",
    "Task",
    "TasksAPI",
]
