"""The Python client for containerd-style daemons (pycontainerd or containerd).

``Client(address, namespace=...)`` talks gRPC on the daemon's unix socket. Errors come
back as ``pycontainerd.errdefs`` kinds (``NotFound``, ``AlreadyExists`` …) carrying the
daemon's message.
"""

from pycontainerd.client.client import Client, EventEnvelope, Namespace, PluginInfo, ServerVersion

__all__ = ["Client", "EventEnvelope", "Namespace", "PluginInfo", "ServerVersion"]
