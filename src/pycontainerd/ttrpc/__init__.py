"""ttrpc, containerd's lightweight RPC for shims, over asyncio on unix sockets.

Framing lives in ``pycontainerd.sansio.ttrpc``; this package only moves bytes between
sockets and that decoder; errdefs kinds map to and from ``google.rpc.Status`` codes (the
gRPC code numbers) through ``errdefs.status_of`` / ``errdefs.from_status``.
"""

from __future__ import annotations

from pycontainerd import namespaces

NAMESPACE_KEY = namespaces.TTRPC_HEADER


def namespace_metadata(ns: str) -> dict[str, str]:
    """The metadata that carries containerd's namespace on a ttrpc call."""
    return {NAMESPACE_KEY: ns}


# Shims import this package: it must not pull in grpc (about 12 MB per shim process);
# status codes and error kinds come from errdefs (``Code``, ``status_of``, ``from_status``).

from pycontainerd.ttrpc.client import Client, ClientStream  # noqa: E402
from pycontainerd.ttrpc.server import (  # noqa: E402
    RequestContext,
    Server,
    ServerStream,
    StreamHandler,
    StreamMethod,
    UnaryHandler,
)

__all__ = [
    "NAMESPACE_KEY",
    "Client",
    "ClientStream",
    "RequestContext",
    "Server",
    "ServerStream",
    "StreamHandler",
    "StreamMethod",
    "UnaryHandler",
    "namespace_metadata",
]
