"""The daemon's ttrpc listener for shim events: ``containerd.services.events.ttrpc.v1.
Events/Forward`` on ``<grpc address>.ttrpc`` (the ``TTRPC_ADDRESS`` shims are given).

Shims forward envelopes they stamped themselves (namespace, topic, timestamp); each goes
into the event exchange unchanged, so ``ctr events`` sees ``/tasks/start``,
``/tasks/exit`` and the rest exactly as the shim sent them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import stat
from pathlib import Path

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pycontainerd._api.containerd.services.ttrpc.events.v1 import events_pb2
from pycontainerd.errdefs import FailedPrecondition
from pycontainerd.events.exchange import Envelope, Exchange
from pycontainerd.ttrpc.server import RequestContext, Server

logger = logging.getLogger(__name__)

SERVICE = "containerd.services.events.ttrpc.v1.Events"


def ttrpc_address(grpc_address: str) -> str:
    """Where the ttrpc listener goes, beside the gRPC socket (as in containerd)."""
    return grpc_address + ".ttrpc"


def remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse to touch a live one.

    Raises:
        FailedPrecondition: something answers on ``path``, or it is not a socket.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                path.unlink(missing_ok=True)
                return
            raise FailedPrecondition(f"cannot probe socket {path}: {exc.strerror}") from exc
    raise FailedPrecondition(f"another daemon is already serving on {path}")


class EventsServer:
    """Serves Events/Forward into ``exchange`` until ``aclose``."""

    def __init__(self, exchange: Exchange, path: Path) -> None:
        self._exchange = exchange
        self.path = path
        self._server = Server()
        self._server.register(SERVICE, {"Forward": (events_pb2.ForwardRequest, self._forward)})

    async def _forward(self, request: Message, ctx: RequestContext) -> empty_pb2.Empty:
        assert isinstance(request, events_pb2.ForwardRequest)
        env = request.envelope
        ts = env.timestamp.ToNanoseconds() if env.HasField("timestamp") else 0
        await self._exchange.forward(Envelope(ts, env.namespace, env.topic, env.event))
        return empty_pb2.Empty()

    async def start(self) -> None:
        """Listen on ``path`` (0600: only root's shims may publish).

        Raises:
            FailedPrecondition: another daemon serves there.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        remove_stale_socket(self.path)
        await self._server.serve_unix(self.path, mode=0o600)
        logger.info("serving shim events on %s", self.path)

    async def aclose(self) -> None:
        await self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
