"""The daemon's ttrpc listener for shim events (Events/Forward into the exchange)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from google.protobuf import empty_pb2, timestamp_pb2

from pycontainerd import typeurl
from pycontainerd._api.containerd.events import task_pb2 as events_pb
from pycontainerd._api.containerd.services.ttrpc.events.v1 import events_pb2
from pycontainerd._api.containerd.types import event_pb2
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument
from pycontainerd.events.exchange import Exchange
from pycontainerd.runtime.v2.events_server import (
    SERVICE,
    EventsServer,
    remove_stale_socket,
    ttrpc_address,
)
from pycontainerd.ttrpc.client import Client


def test_ttrpc_address_is_beside_grpc() -> None:
    assert ttrpc_address("/run/x/containerd.sock") == "/run/x/containerd.sock.ttrpc"


async def test_forward_reaches_subscribers(tmp_path: Path) -> None:
    exchange = Exchange()
    server = EventsServer(exchange, tmp_path / "d.sock.ttrpc")
    await server.start()
    client = await Client.connect(str(server.path))
    try:
        event = typeurl.marshal_any(events_pb.TaskOOM(container_id="c1"))
        envelope = event_pb2.Envelope(
            timestamp=timestamp_pb2.Timestamp(seconds=100),
            namespace="ns1",
            topic="/tasks/oom",
            event=event,
        )
        async with exchange.subscribe() as stream:
            await client.call(
                SERVICE,
                "Forward",
                events_pb2.ForwardRequest(envelope=envelope),
                empty_pb2.Empty,
                timeout=5,
            )
            got = await asyncio.wait_for(anext(stream), 5)
        assert (got.timestamp_ns, got.namespace, got.topic, got.event) == (
            100_000_000_000,
            "ns1",
            "/tasks/oom",
            event,
        )
        no_time = event_pb2.Envelope(namespace="ns1", topic="/tasks/oom", event=event)
        with pytest.raises(InvalidArgument, match="timestamp"):
            await client.call(
                SERVICE,
                "Forward",
                events_pb2.ForwardRequest(envelope=no_time),
                empty_pb2.Empty,
                timeout=5,
            )
    finally:
        await client.close()
        await server.aclose()
    assert not server.path.exists()


def test_stale_socket_is_replaced_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.ttrpc"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    remove_stale_socket(path)
    assert not path.exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(FailedPrecondition, match="already serving"):
            remove_stale_socket(path)
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(FailedPrecondition, match="not a socket"):
        remove_stale_socket(path)
