"""``pycontainerd publish``: the publish binary a shim runs to send an event.

A shim that does not forward over ttrpc runs ``<publish-binary> --address SOCK publish
--topic T --namespace N`` with a protobuf ``google.protobuf.Any`` on stdin; the event
goes to the daemon's Events/Publish over gRPC (containerd's cmd/containerd/command/
publish.go).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
import grpc.aio
from google.protobuf import any_pb2, message

from pycontainerd import namespaces
from pycontainerd._api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from pycontainerd.errdefs import ContainerdError, InvalidArgument, Unavailable
from pycontainerd.errdefs_grpc import from_grpc

CONNECT_TIMEOUT = 2.0
PUBLISH_TIMEOUT = 10.0


def decode_payload(data: bytes) -> any_pb2.Any:
    """Raises InvalidArgument unless ``data`` is a serialized ``Any``."""
    try:
        return any_pb2.Any.FromString(data)
    except message.DecodeError as exc:
        raise InvalidArgument(f"event payload on stdin is not a protobuf Any: {exc}") from exc


async def publish(address: str, namespace: str, topic: str, event: any_pb2.Any) -> None:
    """Publish one event to the daemon at ``address``.

    Raises:
        InvalidArgument: no topic; the daemon's error kind if it refuses the event;
        Unavailable if it cannot be reached.
    """
    if not topic:
        raise InvalidArgument("topic required to publish event")
    async with grpc.aio.insecure_channel(f"unix://{address}") as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
            await stub.Publish(
                events_pb2.PublishRequest(topic=topic, event=event),
                metadata=((namespaces.GRPC_HEADER, namespace),),
                timeout=PUBLISH_TIMEOUT,
            )
        except TimeoutError as exc:
            raise Unavailable(f"failed to dial {address!r}: timed out") from exc
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from exc


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``publish`` to the daemon's subcommands (the daemon's ``--address`` is used)."""
    p = subparsers.add_parser("publish", help="binary to publish events to the daemon")
    p.add_argument("--namespace", default="", help="namespace to publish to")
    p.add_argument("--topic", default="", help="topic of the event")


def main(args: argparse.Namespace, address: str) -> int:
    """Run ``publish``: read the Any from stdin and send it. Returns the exit code."""
    try:
        event = decode_payload(sys.stdin.buffer.read())
        asyncio.run(publish(address, args.namespace, args.topic, event))
    except ContainerdError as exc:
        print(f"pycontainerd publish: {exc}", file=sys.stderr)
        return 1
    return 0
