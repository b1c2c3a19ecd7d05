"""``pycontainerd publish``: an Any on stdin becomes an event in the daemon."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from pycontainerd import typeurl
from pycontainerd._api.containerd.events import task_pb2 as events_pb
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, Unavailable
from pycontainerd.errdefs_grpc import ContainerdInterceptor
from pycontainerd.events.exchange import Envelope, Exchange
from pycontainerd.runtime.v2 import publish
from pycontainerd.services.events.service import EventsService


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Exchange, str]]:
    exchange = Exchange()
    server = grpc.aio.server(interceptors=[ContainerdInterceptor()])
    EventsService(exchange).register(server)
    address = str(tmp_path / "d.sock")
    server.add_insecure_port(f"unix://{address}")
    await server.start()
    try:
        yield exchange, address
    finally:
        await server.stop(None)


async def test_publish_reaches_the_exchange(served: tuple[Exchange, str]) -> None:
    exchange, address = served
    event = typeurl.marshal_any(events_pb.TaskOOM(container_id="c1"))
    payload = publish.decode_payload(event.SerializeToString())
    got: list[Envelope] = []
    async with exchange.subscribe() as stream:
        await publish.publish(address, "ns1", "/tasks/oom", payload)
        got.append(await asyncio.wait_for(anext(stream), 5))
    assert (got[0].namespace, got[0].topic, got[0].event) == ("ns1", "/tasks/oom", event)


async def test_publish_errors(served: tuple[Exchange, str], tmp_path: Path) -> None:
    _, address = served
    with pytest.raises(InvalidArgument, match="topic required"):
        await publish.publish(address, "ns1", "", publish.decode_payload(b""))
    with pytest.raises(FailedPrecondition, match="namespace is required"):
        await publish.publish(address, "", "/x", publish.decode_payload(b""))
    with pytest.raises(InvalidArgument):
        publish.decode_payload(b"\xff\xff")
    with pytest.raises(Unavailable):
        await publish.publish(
            str(tmp_path / "nobody.sock"), "ns1", "/x", publish.decode_payload(b"")
        )


def test_parser_takes_containerd_flags() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address")
    publish.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["--address", "/run/x.sock", "publish", "--topic", "/tasks/oom", "--namespace", "n"]
    )
    assert (args.command, args.address, args.topic, args.namespace) == (
        "publish",
        "/run/x.sock",
        "/tasks/oom",
        "n",
    )
