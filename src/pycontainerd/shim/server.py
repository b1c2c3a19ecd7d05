"""The shim's server process: subreaper, ttrpc Task service, events publisher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from pycontainerd.shim.address import Flags, socket_path
from pycontainerd.shim.publish import Publisher
from pycontainerd.shim.reaper import Reaper, set_subreaper
from pycontainerd.shim.service import TaskService
from pycontainerd.ttrpc import Server


def serve(listener: socket.socket, flags: Flags, address: str) -> int:
    """Serves until Shutdown with no containers left; returns the exit code."""
    set_subreaper()
    asyncio.run(serve_activated(listener, flags, address))
    return 0


async def serve_activated(
    listener: socket.socket, flags: Flags, address: str, reaper: Reaper | None = None
) -> None:
    """Serves in the running loop (a spare's, which installed ``reaper`` already)."""
    logging.basicConfig(
        level=logging.DEBUG if flags.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s shim %(name)s: %(message)s",
    )
    # The daemon's systemd notify socket would make runc wait for the container's READY.
    os.environ.pop("NOTIFY_SOCKET", None)
    try:
        await _serve(listener, flags, reaper)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(socket_path(address))


async def _serve(listener: socket.socket, flags: Flags, reaper: Reaper | None) -> None:
    if reaper is None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
    done = asyncio.Event()
    publisher = Publisher(
        os.environ.get("TTRPC_ADDRESS", ""), flags.address, flags.publish_binary, reaper
    )
    service = TaskService(flags.namespace, reaper, publisher, done.set)
    server = Server()
    service.register(server)
    await server.serve_socket(listener)
    await done.wait()
    await publisher.close()
    await server.close(grace=1.0)
