"""The daemon's gRPC server: gRPC over our HTTP/2 connection (``sansio.http2``) on asyncio.

grpc.aio's server spends about 300 µs of CPU per call in its completion-queue machinery,
about twice what containerd spends per call, and ``ctr run`` makes some forty calls.
This server reads frames straight off the socket in the event loop and writes each
unary answer with one ``write``: about a third of the cost. It serves the same method
handlers (``grpc.RpcMethodHandler``: (de)serializers and a coroutine per call) that the
services register, and hands them a context with the parts of grpc.aio's
``ServicerContext`` they use. Python's grpcio remains the client library.

gRPC over HTTP/2 (the PROTOCOL-HTTP2 document of grpc): a call is a stream; the request
headers name the method (``:path``) and may carry ``grpc-timeout``; messages are
length-prefixed (1 byte compressed flag, 4 bytes length); the answer is headers, messages
and trailers carrying ``grpc-status`` and a percent-encoded ``grpc-message``, or only
trailers when nothing was sent. No compression is offered, so none is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from pycontainerd.sansio import http2
from pycontainerd.sansio.grpc_messages import (
    PREFIX,
    CompressedMessage,
    MessageReader,
    MessageTooLarge,
    encode_message,
)

logger = logging.getLogger(__name__)

Lookup = Callable[[str], "grpc.RpcMethodHandler[Any, Any] | None"]

_RESPONSE_HEADERS = b"\x88" + http2.literal_header_indexed_name(31, b"application/grpc")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Request headers that are HTTP/2 or gRPC plumbing, not the caller's metadata.
_NOT_METADATA = frozenset(
    ("content-type", "te", "user-agent", "grpc-timeout", "grpc-encoding",
     "grpc-accept-encoding", "grpc-message-type", "content-length")
)  # fmt: skip
_OK = grpc.StatusCode.OK


def status_block(code: grpc.StatusCode, message: str, with_headers: bool) -> bytes:
    """The trailers of a call (with the response headers for a trailers-only answer)."""
    block = _RESPONSE_HEADERS if with_headers else b""
    block += http2.literal_header(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += http2.literal_header(b"grpc-message", percent_encode(message))
    return block


def percent_encode(message: str) -> bytes:
    """gRPC's encoding of grpc-message: UTF-8, with bytes outside 0x20-0x7E and '%'
    written as %XX."""
    raw = message.encode("utf-8", errors="replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def parse_timeout(value: str) -> float | None:
    """Seconds from a ``grpc-timeout`` value (at most 8 digits and a unit); None if bad."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


class _Abort(Exception):
    """Ends a call early with a status (before a handler runs)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Context:
    """What a handler gets as ``context``: the parts of grpc.aio's ServicerContext
    that our services use."""

    def __init__(self, call: _Call, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._call = call
        self._metadata = metadata
        self.code: grpc.StatusCode = _OK
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        if code == _OK:
            raise ValueError("abort with status OK")
        self.code, self.details = code, details
        raise grpc.aio.AbortError()

    async def write(self, message: Any) -> None:
        await self._call.send_message(self._call.serialize(message))

    async def send_initial_metadata(self, metadata: Any = ()) -> None:
        self._call.send_headers(metadata)

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.task is not None and self._call.task.done()

    def peer(self) -> str:
        return "unix:"

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class _Call:
    """One RPC: its stream, its handler's task, its request messages."""

    def __init__(
        self,
        conn: _Connection,
        stream_id: int,
        handler: grpc.RpcMethodHandler[Any, Any],
        metadata: tuple[tuple[str, str | bytes], ...],
        deadline: float | None,
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.handler = handler
        self.deadline = deadline
        self.context = Context(self, metadata)
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False
        self.deadline_exceeded = False
        self.headers_sent = False
        self.finished = False
        self._reader = MessageReader(conn.server.max_recv)
        self._taken = 0  # request bytes handed to the handler
        self._acked = 0  # request bytes given back to the client's window
        self._messages: asyncio.Queue[bytes | None] | None = None
        self._request: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._streaming_request = handler.request_streaming

    # -- requests in ---------------------------------------------------------------------

    def feed(self, data: bytes, end: bool) -> None:
        """Message bytes from the client; starts the handler when it has what it needs."""
        if self.finished:
            return
        try:
            for message in self._reader.feed(data):
                self._message(message)
        except MessageTooLarge as exc:
            self._refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        except CompressedMessage as exc:
            self._refuse(grpc.StatusCode.UNIMPLEMENTED, f"{exc} (no grpc-encoding offered)")
            return
        self._open_window()
        if end:
            self._end_of_requests()

    def _open_window(self) -> None:
        """Give the client back what the handler took, and room for the message being
        received: whole messages waiting in the queue keep the stream's window shut,
        so a client streaming faster than its handler reads is held back."""
        target = self._taken + self._reader.buffered
        if target > self._acked:
            self.conn.h2.consumed(self.stream_id, target - self._acked)
            self._acked = target

    def _message(self, message: bytes) -> None:
        if self._streaming_request:
            assert self._messages is not None
            self._messages.put_nowait(message)
        elif self._request is None:
            self._taken += len(message) + PREFIX.size
            self._request = message
        else:
            self._refuse(grpc.StatusCode.INTERNAL, "grpc: a unary call got two request messages")

    def _end_of_requests(self) -> None:
        if self.finished:
            return
        if self._reader.buffered:
            self._refuse(grpc.StatusCode.INTERNAL, "grpc: the request ended inside a message")
        elif self._streaming_request:
            assert self._messages is not None
            self._messages.put_nowait(None)
        elif self._request is None:
            self._refuse(grpc.StatusCode.INTERNAL, "grpc: a unary call got no request message")
        else:
            self.start()

    def start(self) -> None:
        if self._streaming_request:
            self._messages = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.conn.server.tasks.add(self.task)
        self.task.add_done_callback(self.conn.server.tasks.discard)

    def arm_deadline(self) -> None:
        """The deadline runs from the request's headers, also while it is incomplete."""
        if self.deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(self.deadline, self._expire)

    async def _requests(self) -> AsyncIterator[Any]:
        assert self._messages is not None
        deserialize = self.handler.request_deserializer
        while True:
            message = await self._messages.get()
            if message is None:
                return
            self._taken += len(message) + PREFIX.size
            self._open_window()
            self.conn.flush()
            yield deserialize(message) if deserialize else message

    # -- responses out -------------------------------------------------------------------

    def serialize(self, message: Any) -> bytes:
        serialize = self.handler.response_serializer
        data: bytes = serialize(message) if serialize else message
        return data

    def send_headers(self, metadata: Any = ()) -> None:
        if not self.headers_sent and not self.finished:
            self.headers_sent = True
            block = _RESPONSE_HEADERS + b"".join(_metadata_field(k, v) for k, v in metadata)
            self.conn.h2.send_headers(self.stream_id, block)
            self.conn.flush()

    async def send_message(self, data: bytes) -> None:
        if self.finished:
            raise asyncio.CancelledError()
        self._check_size(data)
        self.send_headers()
        view = memoryview(encode_message(data))
        while view:
            sent = self.conn.h2.send_data(self.stream_id, view)
            view = view[sent:]
            self.conn.flush()
            if view:
                await self.conn.wait_writable(self)
                if self.finished:
                    raise asyncio.CancelledError()
        await self.conn.drained()

    def _check_size(self, data: bytes) -> None:
        limit = self.conn.server.max_send
        if len(data) > limit:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"grpc: trying to send message larger than max ({len(data)} vs. {limit})",
            )

    def _finish(self, code: grpc.StatusCode, message: str) -> None:
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        h2 = self.conn.h2
        h2.send_headers(self.stream_id, status_block(code, message, not self.headers_sent), True)
        if h2.is_open(self.stream_id):
            # The client is still sending (a stream it did not end): it may stop now.
            h2.reset(self.stream_id, http2.NO_ERROR)
        self.conn.flush()
        self.conn.calls.pop(self.stream_id, None)

    def _refuse(self, code: grpc.StatusCode, message: str) -> None:
        """End the call with ``code`` before or while its handler runs."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._finish(code, message)

    # -- the handler ---------------------------------------------------------------------

    async def _run(self) -> None:
        handler: Any = self.handler  # grpc's stubs type the behaviours for grpc.aio's context
        ctx = self.context
        try:
            if self._streaming_request:
                request: Any = self._requests()
            else:
                assert self._request is not None
                deserialize = handler.request_deserializer
                try:
                    request = deserialize(self._request) if deserialize else self._request
                except Exception as exc:
                    raise _Abort(
                        grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {exc}"
                    ) from None
                self._request = None
            if not handler.response_streaming:
                fn = handler.unary_unary or handler.stream_unary
                response = await fn(request, ctx)
                if ctx.code == _OK:
                    await self._unary_answer(self.serialize(response))
            else:
                fn = handler.unary_stream or handler.stream_stream
                result = fn(request, ctx)
                if hasattr(result, "__anext__"):
                    async for item in result:
                        await ctx.write(item)
                else:
                    await result
            self._finish(ctx.code, ctx.details)
        except grpc.aio.AbortError:
            self._finish(ctx.code, ctx.details)
        except _Abort as exc:
            self._finish(exc.code, exc.message)
        except asyncio.CancelledError:
            if self.deadline_exceeded:
                self._finish(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
            elif not self.cancelled:
                self._finish(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            raise
        except Exception as exc:
            logger.error("unexpected error in RPC %s", self.stream_id, exc_info=exc)
            self._finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")

    async def _unary_answer(self, data: bytes) -> None:
        """Headers, the message and trailers in one write when the windows allow."""
        self._check_size(data)
        h2 = self.conn.h2
        payload = encode_message(data)
        if not self.headers_sent and h2.send_window(self.stream_id) >= len(payload):
            self.headers_sent = True
            h2.send_headers(self.stream_id, _RESPONSE_HEADERS)
            h2.send_data(self.stream_id, payload)
            return  # _finish adds the trailers and writes it all
        await self.send_message(data)

    def _expire(self) -> None:
        self.deadline_exceeded = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        else:
            self._finish(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")

    def client_cancelled(self) -> None:
        self.cancelled = True
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.conn.calls.pop(self.stream_id, None)


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.h2 = http2.ServerConnection()
        self.calls: dict[int, _Call] = {}
        self.transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._window_waiters: dict[int, asyncio.Future[None]] = {}
        self.closed = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        self.h2.initiate()
        if self.server.stopping:
            self.h2.goaway()
        self.flush()

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive(data)
        except http2.ProtocolError as exc:
            logger.debug("closing a gRPC connection: %s", exc)
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, http2.DataReceived):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call.feed(event.data, event.end_stream)
            elif isinstance(event, http2.RequestReceived):
                self._request(event)
            elif isinstance(event, http2.WindowOpened):
                self._wake(event.stream_id)
            elif isinstance(event, http2.StreamReset):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call.client_cancelled()
                self._wake(event.stream_id)
            elif isinstance(event, http2.TrailersReceived):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call.feed(b"", True)
        self.flush()

    def _request(self, event: http2.RequestReceived) -> None:
        sid = event.stream_id
        path = ""
        method = content_type = ""
        timeout: float | None = None
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in event.headers:
            if name[0] == ":":
                if name == ":path":
                    path = value
                elif name == ":method":
                    method = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = parse_timeout(value)
            elif name not in _NOT_METADATA:
                metadata.append((name, _binary(value) if name.endswith("-bin") else value))
        if method != "POST" or not content_type.startswith("application/grpc"):
            self._reject(
                sid, grpc.StatusCode.INTERNAL, f"not a gRPC request ({method} {content_type})"
            )
            return
        handler = self.server.lookup(path)
        if handler is None:
            service = path.rsplit("/", 1)[0].lstrip("/")
            self._reject(
                sid,
                grpc.StatusCode.UNIMPLEMENTED,
                f"unknown method {path.rsplit('/', 1)[-1]} for service {service}",
            )
            return
        deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None
        call = _Call(self, sid, handler, tuple(metadata), deadline)
        self.calls[sid] = call
        call.arm_deadline()
        if handler.request_streaming:
            call.start()
        if event.end_stream:
            call.feed(b"", True)

    def _reject(self, stream_id: int, code: grpc.StatusCode, message: str) -> None:
        self.h2.send_headers(stream_id, status_block(code, message, True), True)
        if self.h2.is_open(stream_id):
            self.h2.reset(stream_id, http2.NO_ERROR)

    async def wait_writable(self, call: _Call) -> None:
        """Until the stream's or the connection's window opens (or the call ends)."""
        if self.h2.send_window(call.stream_id) > 0 or call.finished:
            return
        fut = asyncio.get_running_loop().create_future()
        self._window_waiters[call.stream_id] = fut
        try:
            await fut
        finally:
            self._window_waiters.pop(call.stream_id, None)

    def _wake(self, stream_id: int) -> None:
        if stream_id == 0:
            waiters = list(self._window_waiters.values())
        else:
            waiter = self._window_waiters.get(stream_id)
            waiters = [waiter] if waiter is not None else []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def drained(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
            if self.closed:
                raise asyncio.CancelledError()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def finish(self) -> None:
        if self.transport is not None and not self.closed:
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.closed = True  # nothing more is written; the client's frames are read
            else:
                self.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self.server.connections.discard(self)
        self._writable.set()
        for call in list(self.calls.values()):
            call.client_cancelled()
        self.calls.clear()
        for fut in self._window_waiters.values():
            if not fut.done():
                fut.set_result(None)


def _metadata_field(key: str, value: str | bytes) -> bytes:
    """A custom metadata entry as a header: ``-bin`` values in unpadded base64."""
    name = key.lower().encode("ascii")
    if key.endswith("-bin"):
        raw = value if isinstance(value, bytes) else value.encode()
        return http2.literal_header(name, base64.b64encode(raw).rstrip(b"="))
    text = value.decode("ascii") if isinstance(value, bytes) else value
    return http2.literal_header(name, text.encode("ascii"))


def _binary(value: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return value.encode("latin-1")


class GrpcServer:
    """Serves ``lookup``'s handlers on a unix socket."""

    def __init__(self, lookup: Lookup, *, max_recv: int, max_send: int) -> None:
        self.lookup = lookup
        self.max_recv = max_recv
        self.max_send = max_send
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path, backlog=512)

    async def stop(self, grace: float | None) -> None:
        """Take no new calls (GOAWAY), give the running ones ``grace`` seconds, then
        cancel them and close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.h2.goaway()
            conn.flush()
        if self.tasks and grace:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.wait(set(self.tasks))
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        # Half-close and let each client close its end: closing a unix socket with the
        # client's last frames unread would reset it before it read our GOAWAY. A client
        # that does neither (or stopped reading) is cut after a moment.
        for conn in list(self.connections):
            conn.finish()
        closing = [c.lost for c in self.connections]
        if closing:
            await asyncio.wait(closing, timeout=1.0)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
