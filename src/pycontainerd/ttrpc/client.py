"""asyncio ttrpc client: unary and streaming calls over one unix socket connection.

The connection's protocol feeds a ``FrameDecoder`` as data arrives and routes frames to
pending calls by stream id (no reader task between the socket and the waiting call);
each frame is one transport write, so frames never interleave. Stream ids are odd and
increase.

Errors: a non-OK status raises its errdefs kind; DEADLINE_EXCEEDED raises TimeoutError,
and codes without a kind (CANCELLED among them: a server's cancellation must never look
like the caller's own) raise errdefs.Unknown. A call's own ``timeout`` raises
TimeoutError. When
the connection is lost every pending and later call raises
``errdefs.Unavailable("ttrpc: closed")``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar, cast

from google.protobuf.message import DecodeError, Message

from pycontainerd import errdefs
from pycontainerd._api.ttrpc import request_pb2
from pycontainerd.errdefs import Code, from_status
from pycontainerd.sansio.ttrpc import (
    MAX_MESSAGE,
    Flags,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    StreamIds,
    encode_frame,
)

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

Metadata = Mapping[str, str | Sequence[str]]


def _closed_error() -> errdefs.Unavailable:
    return errdefs.Unavailable("ttrpc: closed")


def _status_error(status_code: int, message: str) -> Exception:
    if status_code == Code.DEADLINE_EXCEEDED:
        return TimeoutError(message or "context deadline exceeded")
    return from_status(status_code, message)


def _parse(payload: bytes, response_type: type[M]) -> M:
    message = response_type()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise errdefs.Unknown(f"ttrpc: undecodable response: {exc}") from exc
    return message


class ClientStream(Generic[M]):
    """The client's end of one streaming call.

    ``send``/``close_send`` for client messages; ``recv`` (or ``async for``) for server
    messages. ``recv`` returns None at the end of the stream, or raises the errdefs kind
    of an error status. Use ``async with`` (or ``aclose``) to release the stream id.
    """

    def __init__(
        self, client: Client, stream_id: int, response_type: type[M], client_streaming: bool
    ) -> None:
        self._client = client
        self.stream_id = stream_id
        self._response_type = response_type
        self._inbox: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self._local_closed = not client_streaming
        self._finished = False

    def _deliver(self, item: Frame | BaseException) -> None:
        self._inbox.put_nowait(item)

    async def send(self, message: Message) -> None:
        """Sends one message on the stream; raises FailedPrecondition after close_send."""
        if self._local_closed:
            raise errdefs.FailedPrecondition("ttrpc: stream closed for sending")
        await self._client._send(self.stream_id, MessageType.DATA, message.SerializeToString())

    async def close_send(self) -> None:
        """Tells the server no more messages follow (idempotent)."""
        if self._local_closed:
            return
        self._local_closed = True
        await self._client._send(
            self.stream_id, MessageType.DATA, b"", Flags.REMOTE_CLOSED | Flags.NO_DATA
        )

    async def recv(self) -> M | None:
        """The next server message, or None once the stream ended cleanly."""
        if self._finished:
            return None
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            self._finish()
            raise item
        if item.type == MessageType.RESPONSE:
            self._finish()
            response = request_pb2.Response()
            try:
                response.ParseFromString(item.payload)
            except DecodeError as exc:
                raise errdefs.Unknown(f"ttrpc: undecodable response: {exc}") from exc
            if response.status.code != Code.OK:
                raise _status_error(response.status.code, response.status.message)
            if response.payload:
                return _parse(response.payload, self._response_type)
            return None
        # a data frame
        if item.flags & Flags.REMOTE_CLOSED:
            self._finish()
            if item.flags & Flags.NO_DATA:
                return None
        elif item.flags & Flags.NO_DATA:
            return await self.recv()
        return _parse(item.payload, self._response_type)

    def __aiter__(self) -> AsyncIterator[M]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[M]:
        while (message := await self.recv()) is not None:
            yield message

    def _finish(self) -> None:
        self._finished = True
        self._client._streams.pop(self.stream_id, None)

    async def aclose(self) -> None:
        """Stops listening to the stream; the server may still finish it."""
        self._finish()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _Connection(asyncio.Protocol):
    """The socket side of a ``Client``: frames go to ``on_frame`` as they arrive, and
    ``on_lost`` runs once when the connection ends."""

    def __init__(
        self, on_frame: Callable[[Frame | OversizedFrame], None], on_lost: Callable[[], None]
    ) -> None:
        self._decoder = FrameDecoder()
        self._on_frame = on_frame
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._writable: asyncio.Future[None] | None = None  # set while writes are paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport

    def data_received(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self._on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        self._on_lost()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    async def drain(self) -> None:
        """Returns once the transport's buffer is below its limit (or the connection
        is gone)."""
        if self._writable is not None:
            await asyncio.shield(self._writable)


class Client:
    """A connection to a ttrpc server."""

    def __init__(self) -> None:
        self._connection = _Connection(self._route, self._shutdown)
        self._ids = StreamIds()
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._streams: dict[int, ClientStream[Message]] = {}
        self._close_callbacks: list[Callable[[], None]] = []
        self._closed = asyncio.Event()

    @classmethod
    async def connect(cls, path: str | Path, *, timeout: float = 10.0) -> Client:
        """Connects to the unix socket at ``path``.

        Raises errdefs.Unavailable if it cannot connect within ``timeout`` seconds."""
        client = cls()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_unix_connection(lambda: client._connection, os.fspath(path))
        except (OSError, TimeoutError) as exc:
            raise errdefs.Unavailable(f"ttrpc: connect {path}: {exc}") from exc
        return client

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Returns once the connection is closed, by us or by the server (or its death)."""
        await self._closed.wait()

    def add_close_callback(self, fn: Callable[[], None]) -> None:
        """Calls ``fn()`` once when the connection closes (at once if already closed)."""
        if self.closed:
            fn()
        else:
            self._close_callbacks.append(fn)

    async def close(self) -> None:
        """Closes the connection; pending calls raise Unavailable."""
        transport = self._connection.transport
        if transport is None:
            self._shutdown()
            return
        transport.close()
        await self._closed.wait()

    def _route(self, frame: Frame | OversizedFrame) -> None:
        if isinstance(frame, OversizedFrame):
            error = errdefs.Unknown(
                f"ttrpc: response of {frame.length} bytes exceeds maximum of {MAX_MESSAGE}"
            )
            future = self._pending.pop(frame.stream_id, None)
            if future is not None and not future.done():
                future.set_exception(error)
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._deliver(error)
            return
        future = self._pending.pop(frame.stream_id, None)
        if future is not None:
            if frame.type == MessageType.RESPONSE and not future.done():
                future.set_result(frame)
            return
        stream = self._streams.get(frame.stream_id)
        if stream is not None and frame.type in (MessageType.RESPONSE, MessageType.DATA):
            stream._deliver(frame)

    def _shutdown(self) -> None:
        if self._connection.transport is not None:
            self._connection.transport.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_closed_error())
        self._pending.clear()
        for stream in list(self._streams.values()):
            stream._deliver(_closed_error())
        self._streams.clear()
        if self._closed.is_set():
            return
        self._closed.set()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:
                logger.exception("ttrpc: close callback failed")

    async def _send(
        self, stream_id: int, type: MessageType, payload: bytes, flags: Flags | int = 0
    ) -> None:
        if len(payload) > MAX_MESSAGE:
            raise errdefs.InvalidArgument(
                f"message length {len(payload)} exceed maximum message size of {MAX_MESSAGE}"
            )
        transport = self._connection.transport
        if self.closed or transport is None or transport.is_closing():
            raise _closed_error()
        transport.write(encode_frame(stream_id, type, payload, flags))
        # A connection lost meanwhile fails the pending call or stream by itself.
        await self._connection.drain()

    @staticmethod
    def _request(
        service: str,
        method: str,
        payload: bytes,
        metadata: Metadata | None,
        timeout: float | None,
    ) -> bytes:
        request = request_pb2.Request(service=service, method=method, payload=payload)
        if timeout is not None:
            request.timeout_nano = max(1, int(timeout * 1e9))
        for key, values in (metadata or {}).items():
            for value in [values] if isinstance(values, str) else values:
                request.metadata.add(key=key, value=value)
        return request.SerializeToString()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        metadata: Metadata | None = None,
        timeout: float | None = None,
    ) -> M:
        """One unary call. Raises the errdefs kind of an error status, TimeoutError after
        ``timeout`` seconds (also sent to the server as the call's deadline), and
        Unavailable if the connection is or gets closed."""
        if self.closed:
            raise _closed_error()
        stream_id = self._ids.allocate()
        frame_payload = self._request(
            service, method, request.SerializeToString(), metadata, timeout
        )
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._send(stream_id, MessageType.REQUEST, frame_payload)
                frame = await future
        finally:
            self._pending.pop(stream_id, None)
        response = request_pb2.Response()
        try:
            response.ParseFromString(frame.payload)
        except DecodeError as exc:
            raise errdefs.Unknown(f"ttrpc: undecodable response: {exc}") from exc
        if response.status.code != Code.OK:
            raise _status_error(response.status.code, response.status.message)
        return _parse(response.payload, response_type)

    async def stream(
        self,
        service: str,
        method: str,
        request: Message | None,
        response_type: type[M],
        *,
        client_streaming: bool = False,
        metadata: Metadata | None = None,
        timeout: float | None = None,
    ) -> ClientStream[M]:
        """Starts a streaming call and returns its stream.

        With ``client_streaming`` the request is flagged REMOTE_OPEN and the caller sends
        messages with ``send`` then ``close_send``; ``request``, if given, is sent in the
        request frame as the first message. Otherwise ``request`` is the only client
        message (flag REMOTE_CLOSED) and the server answers with a stream of messages.
        ``timeout`` is sent to the server as the deadline of the whole call."""
        if self.closed:
            raise _closed_error()
        stream_id = self._ids.allocate()
        payload = request.SerializeToString() if request is not None else b""
        frame_payload = self._request(service, method, payload, metadata, timeout)
        stream: ClientStream[M] = ClientStream(self, stream_id, response_type, client_streaming)
        self._streams[stream_id] = stream  # type: ignore[assignment]
        flags = Flags.REMOTE_OPEN if client_streaming else Flags.REMOTE_CLOSED
        try:
            await self._send(stream_id, MessageType.REQUEST, frame_payload, flags)
        except BaseException:
            self._streams.pop(stream_id, None)
            raise
        return stream

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
