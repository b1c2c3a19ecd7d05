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

__all__ = [
    "AsyncAPI",
    "AsyncClient",
    "Client",
    "EventEnvelope",
    "Namespace",
    "PluginInfo",
    "ServerVersion",
]
