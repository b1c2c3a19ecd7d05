import asyncio

import pytest

from pycontainerd import namespaces
from pycontainerd._api.containerd.events import namespace_pb2
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, Unavailable
from pycontainerd.events.exchange import Envelope, Exchange


async def _collect(stream, n: int) -> list[Envelope]:  # type: ignore[no-untyped-def]
    out = []
    async for env in stream:
        out.append(env)
        if len(out) == n:
            break
    return out


async def test_publish_reaches_matching_subscribers_in_order() -> None:
    ex = Exchange()
    async with ex.subscribe(['topic~="/namespaces/"']) as only_ns, ex.subscribe() as everything:
        with namespaces.with_namespace("n1"):
            await ex.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="n1"))
            await ex.publish("/tasks/exit", namespace_pb2.NamespaceDelete(name="ignored"))
            await ex.publish("/namespaces/delete", namespace_pb2.NamespaceDelete(name="n1"))
        got = await asyncio.wait_for(_collect(only_ns, 2), 5)
        assert [e.topic for e in got] == ["/namespaces/create", "/namespaces/delete"]
        assert got[0].namespace == "n1"
        assert got[0].event.type_url == "containerd.events.NamespaceCreate"
        every = await asyncio.wait_for(_collect(everything, 3), 5)
        assert [e.topic for e in every] == [
            "/namespaces/create",
            "/tasks/exit",
            "/namespaces/delete",
        ]
    assert ex.subscriber_count == 0


async def test_filters_on_namespace_and_event_fields() -> None:
    ex = Exchange()
    async with ex.subscribe(["namespace==b", 'event.name=="a"']) as stream:
        with namespaces.with_namespace("a"):
            await ex.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="a"))
            await ex.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="zz"))
        with namespaces.with_namespace("b"):
            await ex.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="zz"))
        got = await asyncio.wait_for(_collect(stream, 2), 5)
        assert [(e.namespace, e.topic) for e in got] == [
            ("a", "/namespaces/create"),
            ("b", "/namespaces/create"),
        ]


async def test_publish_validation() -> None:
    ex = Exchange()
    with pytest.raises(FailedPrecondition, match="namespace is required"):
        await ex.publish("/x", namespace_pb2.NamespaceCreate())
    with namespaces.with_namespace("a"):
        for topic in ["", "x", "/", "/a//b", "/a b"]:
            with pytest.raises(InvalidArgument, match="envelope topic"):
                await ex.publish(topic, namespace_pb2.NamespaceCreate())
    with pytest.raises(InvalidArgument, match="timestamp must be set"):
        await ex.forward(Envelope(0, "a", "/x", namespace_pb2.NamespaceCreate()))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="invalid namespace"):
        await ex.forward(Envelope(1, "", "/x", namespace_pb2.NamespaceCreate()))  # type: ignore[arg-type]


async def test_bad_filter_is_invalid_argument() -> None:
    ex = Exchange()
    with pytest.raises(InvalidArgument, match="failed parsing subscription filters"):
        async with ex.subscribe(["topic=="]):
            pass


async def test_slow_subscriber_is_dropped_not_unbounded() -> None:
    ex = Exchange(max_backlog=3)
    async with ex.subscribe() as stream:
        with namespaces.with_namespace("a"):
            for _ in range(5):
                await ex.publish("/x", namespace_pb2.NamespaceCreate())
        got = []
        with pytest.raises(Unavailable, match="fell too far behind"):
            async for env in stream:
                got.append(env)
        assert len(got) == 3


async def test_shutdown_ends_streams() -> None:
    ex = Exchange()
    async with ex.subscribe() as stream:
        ex.begin_shutdown()
        assert [e async for e in stream] == []
