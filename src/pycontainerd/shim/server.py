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
from pycontainerd.shim.zygote import MAX_POOL_LINE, POOL_FULL, POOL_PLACED, parse_reserve
from pycontainerd.ttrpc import Server


def serve(
    listener: socket.socket, flags: Flags, address: str, pool_channel: socket.socket | None
) -> int:
    """Serves until Shutdown with no containers left; returns the exit code."""
    set_subreaper()

    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        await ShimServer(reaper).serve(listener, flags, address, pool_channel)

    asyncio.run(main())
    return 0


class ShimServer:
    """A shim's Task service and ttrpc server. A spare builds it while it waits for
    its container; ``serve`` then adds only what the container's request says."""

    def __init__(self, reaper: Reaper) -> None:
        logging.basicConfig(
            level=logging.WARNING,
            format="%(asctime)s %(levelname)s shim %(name)s: %(message)s",
        )
        self._reaper = reaper
        self._done = asyncio.Event()
        # The namespace and the events' destination come with the container.
        self._service = TaskService("", reaper, Publisher("", "", "", reaper), self._done.set)
        self._server = Server()
        self._service.register(self._server)

    async def serve(
        self,
        listener: socket.socket,
        flags: Flags,
        address: str,
        pool_channel: socket.socket | None,
    ) -> None:
        """Serves on ``listener`` until Shutdown with no containers left.

        With ``pool_channel`` (from the fork server) this shim is pooled: it serves other
        containers than the one it was started for, when the fork server places them
        here (``serve_pool_channel``)."""
        if flags.debug:
            logging.getLogger().setLevel(logging.DEBUG)
        # The daemon's systemd notify socket would make runc wait for the container's READY.
        os.environ.pop("NOTIFY_SOCKET", None)
        publisher = Publisher(
            os.environ.get("TTRPC_ADDRESS", ""), flags.address, flags.publish_binary, self._reaper
        )
        service = self._service
        service.namespace = flags.namespace
        service.publisher = publisher
        try:
            await self._server.serve_socket(listener)
            pool_task = None
            if pool_channel is not None:
                service.reserve(flags.id, limit=1)  # the container we were started for
                pool_task = asyncio.create_task(serve_pool_channel(pool_channel, service))
            await self._done.wait()
            if pool_task is not None:
                pool_task.cancel()
            await publisher.close()
            await self._server.close(grace=1.0)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(socket_path(address))


async def serve_pool_channel(channel: socket.socket, service: TaskService) -> None:
    """Answers the fork server's ``reserve <id> <limit>`` lines with ``ok`` or ``full``
    until it hangs up (this shim then takes no more containers)."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    pending = b""
    with channel:
        while chunk := await loop.sock_recv(channel, 4096):
            pending += chunk
            if len(pending) > MAX_POOL_LINE:
                return
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                asked = parse_reserve(line)
                taken = asked is not None and service.reserve(*asked)
                await loop.sock_sendall(channel, POOL_PLACED if taken else POOL_FULL)
