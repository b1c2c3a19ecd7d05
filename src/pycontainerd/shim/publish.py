"""Events back to the daemon, in order: ttrpc ``Events/Forward`` on TTRPC_ADDRESS, or
``<publish-binary> --address A publish --topic T --namespace N`` with the Any on stdin
when the daemon gave no ttrpc address (as containerd 1.6's shim publisher)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess

from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2

from pycontainerd import typeurl
from pycontainerd._api.containerd.events import task_pb2 as events
from pycontainerd._api.containerd.services.ttrpc.events.v1 import events_pb2
from pycontainerd._api.containerd.types import event_pb2
from pycontainerd.shim.address import socket_path
from pycontainerd.shim.reaper import Reaper

logger = logging.getLogger(__name__)

FORWARD_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_ATTEMPTS = 5

TOPICS: dict[type[pb_message.Message], str] = {
    events.TaskCreate: "/tasks/create",
    events.TaskStart: "/tasks/start",
    events.TaskExit: "/tasks/exit",
    events.TaskDelete: "/tasks/delete",
    events.TaskExecAdded: "/tasks/exec-added",
    events.TaskExecStarted: "/tasks/exec-started",
    events.TaskPaused: "/tasks/paused",
    events.TaskResumed: "/tasks/resumed",
    events.TaskOOM: "/tasks/oom",
    events.TaskCheckpointed: "/tasks/checkpointed",
}


class Publisher:
    """Queues events and sends them one at a time, retrying briefly on failure."""

    def __init__(
        self, ttrpc_address: str, daemon_address: str, publish_binary: str, reaper: Reaper
    ) -> None:
        self._ttrpc_address = ttrpc_address
        self._daemon_address = daemon_address
        self._publish_binary = publish_binary
        self._reaper = reaper
        self._queue: asyncio.Queue[event_pb2.Envelope] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._client: object | None = None

    def publish(self, namespace: str, event: pb_message.Message) -> None:
        timestamp = timestamp_pb2.Timestamp()
        timestamp.GetCurrentTime()
        envelope = event_pb2.Envelope(
            timestamp=timestamp,
            namespace=namespace,
            topic=TOPICS[type(event)],
            event=typeurl.marshal_any(event),
        )
        self._queue.put_nowait(envelope)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self, timeout: float = 5.0) -> None:
        """Waits (bounded) until every queued event has been sent or given up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()

    async def _run(self) -> None:
        while True:
            envelope = await self._queue.get()
            try:
                for attempt in range(_ATTEMPTS):
                    try:
                        await self._send(envelope)
                        break
                    except Exception as exc:
                        await self._drop_client()
                        if attempt == _ATTEMPTS - 1:
                            logger.warning("publish %s: %s", envelope.topic, exc)
                        else:
                            await asyncio.sleep(0.05 * (attempt + 1))
            finally:
                self._queue.task_done()

    async def _send(self, envelope: event_pb2.Envelope) -> None:
        if self._ttrpc_address:
            from google.protobuf import empty_pb2

            from pycontainerd.ttrpc import Client, namespace_metadata

            if self._client is None:
                self._client = await Client.connect(socket_path(self._ttrpc_address))
            assert isinstance(self._client, Client)
            await self._client.call(
                FORWARD_SERVICE,
                "Forward",
                events_pb2.ForwardRequest(envelope=envelope),
                empty_pb2.Empty,
                metadata=namespace_metadata(envelope.namespace),
                timeout=5.0,
            )
            return
        argv = [
            self._publish_binary,
            "--address",
            self._daemon_address,
            "publish",
            "--topic",
            envelope.topic,
            "--namespace",
            envelope.namespace,
        ]
        code, _ = await self._reaper.run(
            argv, input_bytes=envelope.event.SerializeToString(), stderr=subprocess.DEVNULL
        )
        if code != 0:
            raise RuntimeError(f"{self._publish_binary} publish exited with {code}")

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            from pycontainerd.ttrpc import Client

            assert isinstance(client, Client)
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_client()
