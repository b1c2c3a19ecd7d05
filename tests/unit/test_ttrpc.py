"""ttrpc client and server over real unix sockets in tmp_path."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from pycontainerd import errdefs, namespaces
from pycontainerd._api.ttrpc import request_pb2
from pycontainerd.sansio.ttrpc import (
    MAX_MESSAGE,
    Flags,
    Frame,
    FrameDecoder,
    MessageType,
    encode_frame,
)
from pycontainerd.ttrpc import (
    Client,
    RequestContext,
    Server,
    ServerStream,
    StreamMethod,
    namespace_metadata,
)

SERVICE = "test.v1.Echo"


class Handlers:
    """Test service: records what handlers saw; ``release`` unblocks ``Block``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen: list[RequestContext] = []

    async def echo(self, request: Message, ctx: RequestContext) -> Message:
        assert isinstance(request, StringValue)
        self.seen.append(ctx)
        return StringValue(value=request.value)

    async def whoami(self, request: Message, ctx: RequestContext) -> Message:
        return StringValue(value=namespaces.current() or "")

    async def fail(self, request: Message, ctx: RequestContext) -> Message:
        assert isinstance(request, StringValue)
        kinds: dict[str, type[errdefs.ContainerdError]] = {
            kind.__name__: kind for kind in errdefs.ALL_KINDS
        }
        raise kinds[request.value](f"thing {request.value}")

    async def crash(self, request: Message, ctx: RequestContext) -> Message:
        raise RuntimeError("boom")

    async def block(self, request: Message, ctx: RequestContext) -> Message:
        self.blocked.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return StringValue(value="released")

    async def delayed(self, request: Message, ctx: RequestContext) -> Message:
        # answers in reverse order of the delays: proves responses are routed by id
        assert isinstance(request, Int64Value)
        for _ in range(request.value):
            await asyncio.sleep(0)
        return request

    async def deadline(self, request: Message, ctx: RequestContext) -> Message:
        remaining = (
            None if ctx.deadline is None else ctx.deadline - asyncio.get_running_loop().time()
        )
        return StringValue(value="none" if remaining is None else f"{remaining:.3f}")

    async def count(self, stream: ServerStream, ctx: RequestContext) -> Message | None:
        request = await stream.recv()
        assert isinstance(request, Int64Value)
        for i in range(request.value):
            await stream.send(Int64Value(value=i))
        return None

    async def total(self, stream: ServerStream, ctx: RequestContext) -> Message | None:
        total = 0
        while (message := await stream.recv()) is not None:
            assert isinstance(message, Int64Value)
            total += message.value
        return Int64Value(value=total)

    async def double(self, stream: ServerStream, ctx: RequestContext) -> Message | None:
        while (message := await stream.recv()) is not None:
            assert isinstance(message, Int64Value)
            await stream.send(Int64Value(value=message.value * 2))
        return None

    async def stream_fail(self, stream: ServerStream, ctx: RequestContext) -> Message | None:
        await stream.send(Int64Value(value=1))
        raise errdefs.NotFound("stream thing")


def make_server(handlers: Handlers) -> Server:
    server = Server()
    server.register(
        SERVICE,
        {
            "Echo": (StringValue, handlers.echo),
            "WhoAmI": (StringValue, handlers.whoami),
            "Fail": (StringValue, handlers.fail),
            "Crash": (StringValue, handlers.crash),
            "Block": (StringValue, handlers.block),
            "Delayed": (Int64Value, handlers.delayed),
            "Deadline": (StringValue, handlers.deadline),
        },
    )
    server.register_stream(
        SERVICE,
        {
            "Count": StreamMethod(Int64Value, handlers.count),
            "Total": StreamMethod(Int64Value, handlers.total),
            "Double": StreamMethod(Int64Value, handlers.double),
            "StreamFail": StreamMethod(Int64Value, handlers.stream_fail),
        },
    )
    return server


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
async def served(tmp_path: Path, handlers: Handlers) -> AsyncIterator[tuple[Server, Path]]:
    server = make_server(handlers)
    path = tmp_path / "ttrpc.sock"
    await server.serve_unix(path)
    try:
        yield server, path
    finally:
        handlers.release.set()
        await server.close(grace=1)


@pytest.fixture
async def client(served: tuple[Server, Path]) -> AsyncIterator[Client]:
    c = await Client.connect(served[1])
    try:
        yield c
    finally:
        await c.close()


async def echo(client: Client, text: str, **kwargs: object) -> str:
    reply = await client.call(SERVICE, "Echo", StringValue(value=text), StringValue, **kwargs)  # type: ignore[arg-type]
    return reply.value


async def test_unary_round_trip(client: Client, handlers: Handlers) -> None:
    assert await echo(client, "hello") == "hello"
    assert await echo(client, "") == ""
    assert handlers.seen[0].service == SERVICE and handlers.seen[0].method == "Echo"


async def test_socket_mode(served: tuple[Server, Path]) -> None:
    assert served[1].stat().st_mode & 0o777 == 0o600


async def test_metadata_and_namespace(client: Client, handlers: Handlers) -> None:
    metadata = {**namespace_metadata("k8s.io"), "multi": ["a", "b"]}
    await echo(client, "x", metadata=metadata)
    ctx = handlers.seen[-1]
    assert ctx.namespace == "k8s.io"
    assert ctx.metadata["multi"] == ["a", "b"]
    reply = await client.call(
        SERVICE, "WhoAmI", StringValue(), StringValue, metadata=namespace_metadata("default")
    )
    assert reply.value == "default"
    assert (await client.call(SERVICE, "WhoAmI", StringValue(), StringValue)).value == ""


@pytest.mark.parametrize("kind", errdefs.ALL_KINDS, ids=lambda k: k.__name__)
async def test_error_kinds_round_trip(client: Client, kind: type[errdefs.ContainerdError]) -> None:
    with pytest.raises(kind) as info:
        await client.call(SERVICE, "Fail", StringValue(value=kind.__name__), StringValue)
    assert type(info.value) is kind
    assert str(info.value) == str(kind(f"thing {kind.__name__}"))


async def test_unexpected_exception_is_unknown_and_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(errdefs.Unknown, match="boom"):
        await client.call(SERVICE, "Crash", StringValue(), StringValue)
    assert any("Crash" in r.getMessage() for r in caplog.records)
    assert await echo(client, "still here") == "still here"


async def test_unknown_service_and_method_are_unimplemented(client: Client) -> None:
    with pytest.raises(errdefs.NotImplemented_):
        await client.call(SERVICE, "Nope", StringValue(), StringValue)
    with pytest.raises(errdefs.NotImplemented_):
        await client.call("no.such.Service", "Echo", StringValue(), StringValue)


async def test_undecodable_request_is_invalid_argument(served: tuple[Server, Path]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served[1]))
    truncated_varint = b"\x08\xff"
    request = request_pb2.Request(service=SERVICE, method="Delayed", payload=truncated_varint)
    writer.write(encode_frame(1, MessageType.REQUEST, request.SerializeToString()))
    response = request_pb2.Response.FromString((await _read_frame(reader)).payload)
    assert response.status.code == 3  # INVALID_ARGUMENT
    writer.close()


async def test_client_timeout_raises_and_is_sent_as_deadline(client: Client) -> None:
    reply = await client.call(SERVICE, "Deadline", StringValue(), StringValue, timeout=30)
    assert 0 < float(reply.value) <= 30
    reply = await client.call(SERVICE, "Deadline", StringValue(), StringValue)
    assert reply.value == "none"
    with pytest.raises(TimeoutError):
        await client.call(SERVICE, "Block", StringValue(), StringValue, timeout=0.05)
    assert await echo(client, "after timeout") == "after timeout"


async def test_server_enforces_request_deadline(
    served: tuple[Server, Path], handlers: Handlers
) -> None:
    # send timeout_nano by hand so only the server's deadline can end the call
    reader, writer = await asyncio.open_unix_connection(str(served[1]))
    request = request_pb2.Request(
        service=SERVICE, method="Block", payload=b"", timeout_nano=20_000_000
    )
    writer.write(encode_frame(1, MessageType.REQUEST, request.SerializeToString()))
    frame = await _read_frame(reader)
    response = request_pb2.Response.FromString(frame.payload)
    assert response.status.code == 4  # DEADLINE_EXCEEDED
    assert handlers.cancelled.is_set()
    writer.close()


async def test_concurrent_calls_interleave(client: Client) -> None:
    delays = list(range(20, 0, -1))
    replies = await asyncio.gather(
        *(client.call(SERVICE, "Delayed", Int64Value(value=d), Int64Value) for d in delays)
    )
    assert [r.value for r in replies] == delays


async def test_blocked_call_does_not_block_others(client: Client, handlers: Handlers) -> None:
    blocked = asyncio.create_task(client.call(SERVICE, "Block", StringValue(), StringValue))
    await handlers.blocked.wait()
    assert await echo(client, "meanwhile") == "meanwhile"
    handlers.release.set()
    assert (await blocked).value == "released"


async def test_server_close_lets_in_flight_calls_finish(
    served: tuple[Server, Path], client: Client, handlers: Handlers
) -> None:
    server, path = served
    blocked = asyncio.create_task(client.call(SERVICE, "Block", StringValue(), StringValue))
    await handlers.blocked.wait()
    closing = asyncio.create_task(server.close(grace=30))
    await asyncio.sleep(0)
    with pytest.raises(errdefs.Unavailable):
        await Client.connect(path, timeout=1)
    handlers.release.set()
    assert (await blocked).value == "released"
    await closing
    await server.wait_closed()
    await asyncio.wait_for(client.wait_closed(), 5)


async def test_server_close_after_grace_cancels_and_client_sees_unavailable(
    served: tuple[Server, Path], client: Client, handlers: Handlers
) -> None:
    server, _ = served
    blocked = asyncio.create_task(client.call(SERVICE, "Block", StringValue(), StringValue))
    await handlers.blocked.wait()
    await server.close(grace=0.01)
    with pytest.raises(errdefs.Unavailable, match="ttrpc: closed"):
        await blocked
    assert handlers.cancelled.is_set()
    assert client.closed


async def test_connection_loss_fails_pending_calls_and_runs_callbacks(tmp_path: Path) -> None:
    path = tmp_path / "raw.sock"
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(HEADER_AND_SOME)  # swallow the request, never answer
        accepted.put_nowait(writer)

    raw = await asyncio.start_unix_server(on_connect, path=str(path))
    client = await Client.connect(path)
    calls: list[str] = []
    client.add_close_callback(lambda: calls.append("closed"))
    pending = asyncio.create_task(client.call(SERVICE, "Echo", StringValue(), StringValue))
    writer = await accepted.get()
    writer.close()
    with pytest.raises(errdefs.Unavailable, match="ttrpc: closed"):
        await pending
    await asyncio.wait_for(client.wait_closed(), 5)
    assert client.closed and calls == ["closed"]
    with pytest.raises(errdefs.Unavailable):
        await client.call(SERVICE, "Echo", StringValue(), StringValue)
    client.add_close_callback(lambda: calls.append("late"))
    assert calls == ["closed", "late"]
    await client.close()
    raw.close()
    await raw.wait_closed()


HEADER_AND_SOME = 4096


async def test_connect_to_missing_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(errdefs.Unavailable):
        await Client.connect(tmp_path / "missing.sock", timeout=1)


async def test_client_close_is_idempotent_and_fails_later_calls(client: Client) -> None:
    await client.close()
    await client.close()
    assert client.closed
    with pytest.raises(errdefs.Unavailable):
        await echo(client, "x")


async def test_oversized_request_answered_resource_exhausted(
    served: tuple[Server, Path],
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served[1]))
    length = MAX_MESSAGE + 1
    writer.write(struct.pack(">IIBB", length, 1, MessageType.REQUEST, 0))
    writer.write(b"\0" * length)
    ok = request_pb2.Request(service=SERVICE, method="Echo", payload=b"")
    writer.write(encode_frame(3, MessageType.REQUEST, ok.SerializeToString()))
    first = await _read_frame(reader)
    second = await _read_frame(reader)
    by_id = {first.stream_id: first, second.stream_id: second}
    assert request_pb2.Response.FromString(by_id[1].payload).status.code == 8
    assert request_pb2.Response.FromString(by_id[3].payload).status.code == 0
    writer.close()


async def test_client_refuses_to_send_oversized_request(client: Client) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        await echo(client, "x" * (MAX_MESSAGE + 1))
    assert await echo(client, "fine") == "fine"


async def test_even_stream_id_and_garbage_request(served: tuple[Server, Path]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served[1]))
    ok = request_pb2.Request(service=SERVICE, method="Echo").SerializeToString()
    writer.write(encode_frame(2, MessageType.REQUEST, ok))
    assert request_pb2.Response.FromString((await _read_frame(reader)).payload).status.code == 3
    writer.write(encode_frame(5, MessageType.REQUEST, b"\xff\xff\xff"))
    assert request_pb2.Response.FromString((await _read_frame(reader)).payload).status.code == 3
    writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> Frame:
    header = await asyncio.wait_for(reader.readexactly(10), 10)
    length = struct.unpack(">I", header[:4])[0]
    payload = await reader.readexactly(length)
    (frame,) = FrameDecoder().feed(header + payload)
    assert isinstance(frame, Frame)
    return frame


# streaming


async def test_server_streaming(client: Client) -> None:
    async with await client.stream(SERVICE, "Count", Int64Value(value=5), Int64Value) as stream:
        assert [m.value async for m in stream] == [0, 1, 2, 3, 4]
        assert await stream.recv() is None


async def test_client_streaming(client: Client) -> None:
    stream = await client.stream(SERVICE, "Total", None, Int64Value, client_streaming=True)
    for value in (1, 2, 3):
        await stream.send(Int64Value(value=value))
    await stream.close_send()
    with pytest.raises(errdefs.FailedPrecondition):
        await stream.send(Int64Value(value=4))
    reply = await stream.recv()
    assert reply is not None and reply.value == 6
    assert await stream.recv() is None


async def test_bidirectional_streaming(client: Client) -> None:
    async with await client.stream(
        SERVICE, "Double", Int64Value(value=1), Int64Value, client_streaming=True
    ) as stream:
        first = await stream.recv()
        assert first is not None and first.value == 2
        await stream.send(Int64Value(value=21))
        second = await stream.recv()
        assert second is not None and second.value == 42
        await stream.close_send()
        assert await stream.recv() is None


async def test_stream_error_status_raises_kind(client: Client) -> None:
    stream = await client.stream(SERVICE, "StreamFail", Int64Value(), Int64Value)
    first = await stream.recv()
    assert first is not None and first.value == 1
    with pytest.raises(errdefs.NotFound, match="stream thing"):
        await stream.recv()


async def test_stream_on_unary_method_and_unknown_method(client: Client) -> None:
    stream = await client.stream(SERVICE, "Nope", Int64Value(), Int64Value)
    with pytest.raises(errdefs.NotImplemented_):
        await stream.recv()


async def test_stream_fails_on_connection_loss(served: tuple[Server, Path], client: Client) -> None:
    stream = await client.stream(SERVICE, "Total", None, Int64Value, client_streaming=True)
    await served[0].close(grace=0.01)
    with pytest.raises(errdefs.Unavailable):
        await stream.recv()


# robustness


def _garbled_frames(rng: random.Random) -> bytes:
    valid = request_pb2.Request(service=SERVICE, method="Echo").SerializeToString()
    parts: list[bytes] = []
    for _ in range(rng.randrange(1, 12)):
        choice = rng.randrange(6)
        stream_id = rng.randrange(0, 1 << 32)
        if choice == 0:
            parts.append(rng.randbytes(rng.randrange(0, 64)))
        elif choice == 1:
            parts.append(encode_frame(stream_id, MessageType.REQUEST, rng.randbytes(20)))
        elif choice == 2:
            parts.append(encode_frame(stream_id, rng.randrange(256), valid, rng.randrange(256)))
        elif choice == 3:
            parts.append(encode_frame(stream_id, MessageType.DATA, rng.randbytes(8), Flags(1)))
        elif choice == 4:
            parts.append(struct.pack(">IIBB", rng.randrange(1 << 32), stream_id, 1, 0))
        else:
            corrupted = bytearray(encode_frame(stream_id | 1, MessageType.REQUEST, valid))
            corrupted[rng.randrange(len(corrupted))] ^= 0xFF
            parts.append(bytes(corrupted))
    return b"".join(parts)


async def test_client_disconnect_cancels_its_handlers(client: Client, handlers: Handlers) -> None:
    blocked = asyncio.create_task(client.call(SERVICE, "Block", StringValue(), StringValue))
    await handlers.blocked.wait()
    await client.close()
    with pytest.raises(errdefs.Unavailable):
        await blocked
    await asyncio.wait_for(handlers.cancelled.wait(), 10)


async def test_reused_stream_id_closes_only_that_connection(
    served: tuple[Server, Path], client: Client
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served[1]))
    ok = request_pb2.Request(service=SERVICE, method="Echo").SerializeToString()
    writer.write(encode_frame(1, MessageType.REQUEST, ok) * 2)
    # the server closes the connection (cancelling the first call, if still running)
    rest = await asyncio.wait_for(reader.read(), 10)
    assert all(f.stream_id == 1 for f in FrameDecoder().feed(rest))
    writer.close()
    assert await echo(client, "unaffected") == "unaffected"


async def test_fuzzed_connections_do_not_hurt_the_server(
    served: tuple[Server, Path], client: Client
) -> None:
    rng = random.Random(1234)
    for _ in range(40):
        _, writer = await asyncio.open_unix_connection(str(served[1]))
        try:
            writer.write(_garbled_frames(rng))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
    async with await Client.connect(served[1]) as fresh:
        assert await echo(fresh, "alive") == "alive"
    assert await echo(client, "existing connection too") == "existing connection too"
