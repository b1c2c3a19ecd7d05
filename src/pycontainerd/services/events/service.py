"""containerd.services.events.v1.Events over grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2, timestamp_pb2

from pycontainerd._api.containerd.services.events.v1 import events_pb2 as pb
from pycontainerd._api.containerd.services.events.v1 import events_pb2_grpc as pb_grpc
from pycontainerd._api.containerd.types import event_pb2
from pycontainerd.events.exchange import Envelope, Exchange

Ctx = grpc.aio.ServicerContext[Any, Any]


def envelope_to_pb(env: Envelope) -> event_pb2.Envelope:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(env.timestamp_ns)
    return event_pb2.Envelope(
        timestamp=ts, namespace=env.namespace, topic=env.topic, event=env.event
    )


def envelope_from_pb(env: event_pb2.Envelope) -> Envelope:
    ts = env.timestamp.ToNanoseconds() if env.HasField("timestamp") else 0
    return Envelope(ts, env.namespace, env.topic, env.event)


class EventsService(pb_grpc.EventsServicer):
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_EventsServicer_to_server(self, server)

    async def Publish(self, request: pb.PublishRequest, context: Ctx) -> empty_pb2.Empty:
        await self._exchange.publish(request.topic, request.event)
        return empty_pb2.Empty()

    async def Forward(self, request: pb.ForwardRequest, context: Ctx) -> empty_pb2.Empty:
        await self._exchange.forward(envelope_from_pb(request.envelope))
        return empty_pb2.Empty()

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Ctx
    ) -> AsyncIterator[event_pb2.Envelope]:
        async with self._exchange.subscribe(request.filters) as stream:
            # Send the headers now: a client that subscribes and then triggers an event
            # knows the subscription is in place once the call is established.
            await context.send_initial_metadata(())
            async for env in stream:
                yield envelope_to_pb(env)
