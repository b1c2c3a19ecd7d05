"""asyncio ttrpc server: unary and streaming methods on unix sockets.

One reader task per connection feeds a ``FrameDecoder`` and starts a task per request;
writes go through one lock per connection so frames never interleave. Handlers run with
the call's namespace set (``pycontainerd.namespaces.current()``) and, when the request
carries ``timeout_nano``, inside ``asyncio.timeout_at(deadline)``.

Errors, as containerd's ttrpc server answers them: a raised errdefs kind becomes its
status code; an unknown service or method UNIMPLEMENTED; an undecodable request or an
even stream id INVALID_ARGUMENT; a frame over 4 MiB RESOURCE_EXHAUSTED; any other
exception UNKNOWN (and is logged); a request reaching a closing server UNAVAILABLE.
A connection that breaks framing rules (a reused stream id, data on a stream never
opened) is closed and its running calls cancelled; other connections are unaffected.
A client that disconnects has its running calls cancelled too.

Streaming (ttrpc >= 1.2): register with ``register_stream``. A request flagged
REMOTE_OPEN means the client sends data frames (the last flagged REMOTE_CLOSED); flagged
REMOTE_CLOSED, the request payload is the only client message. The handler gets a
``ServerStream``: ``recv()`` returns the next client message or None at the end, and
``send(msg)`` emits a data frame. When the handler returns, the server ends the stream
with a Response carrying the status and, if the handler returned a message, its bytes
(the reply of a client-streaming method).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from pycontainerd import errdefs, namespaces
from pycontainerd._api.google.rpc import status_pb2
from pycontainerd._api.ttrpc import request_pb2
from pycontainerd.errdefs import Code, status_of
from pycontainerd.sansio.ttrpc import (
    MAX_MESSAGE,
    Flags,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    encode_frame,
)
from pycontainerd.ttrpc import NAMESPACE_KEY

logger = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


@dataclass
class RequestContext:
    """What a handler knows about its call besides the request message."""

    metadata: dict[str, list[str]]
    deadline: float | None  # on the running loop's clock (loop.time()), or None
    service: str = ""
    method: str = ""

    @property
    def namespace(self) -> str | None:
        values = self.metadata.get(NAMESPACE_KEY)
        return values[0] if values else None


UnaryHandler = Callable[[Message, RequestContext], Awaitable[Message]]


class ServerStream:
    """The server's end of one streaming call."""

    def __init__(self, conn: _Connection, stream_id: int, request_type: type[Message]) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._request_type = request_type
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._remote_closed = False

    def _deliver(self, payload: bytes | None) -> None:
        """Queues a client message (None marks the end of the client's messages)."""
        if self._remote_closed:
            return
        if payload is None:
            self._remote_closed = True
        self._inbox.put_nowait(payload)

    async def recv(self) -> Message | None:
        """The next client message, or None once the client closed its side.

        Raises InvalidArgument if the bytes are not a ``request_type``."""
        payload = await self._inbox.get()
        if payload is None:
            self._inbox.put_nowait(None)  # every later recv also sees the end
            return None
        message = self._request_type()
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise errdefs.InvalidArgument(f"unmarshal stream message: {exc}") from exc
        return message

    async def send(self, message: Message) -> None:
        """Sends one message to the client as a data frame."""
        await self._conn.send(self.stream_id, MessageType.DATA, message.SerializeToString())


StreamHandler = Callable[[ServerStream, RequestContext], Awaitable[Message | None]]


@dataclass(frozen=True)
class StreamMethod:
    """A streaming method: its request type and its handler."""

    request_type: type[Message]
    handler: StreamHandler


@dataclass
class _Service:
    unary: dict[str, tuple[type[Message], UnaryHandler]] = field(default_factory=dict)
    streams: dict[str, StreamMethod] = field(default_factory=dict)


def _response(code: int, message: str = "", payload: bytes = b"") -> bytes:
    return request_pb2.Response(
        status=status_pb2.Status(code=code, message=message), payload=payload
    ).SerializeToString()


class _ProtocolViolation(Exception):
    """The peer broke framing rules; the connection is closed."""


class _Connection:
    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._decoder = FrameDecoder()
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._answers: set[asyncio.Task[None]] = set()  # immediate error responses
        self._streams: dict[int, ServerStream] = {}
        self._seen_max_id = 0
        self._closing = False

    async def send(self, stream_id: int, type: MessageType, payload: bytes) -> None:
        if len(payload) > MAX_MESSAGE:
            raise errdefs.InvalidArgument(
                f"message length {len(payload)} exceed maximum message size of {MAX_MESSAGE}"
            )
        frame = encode_frame(stream_id, type, payload)
        async with self._write_lock:
            if self._writer.is_closing():
                raise errdefs.Unavailable("ttrpc: closed")
            self._writer.write(frame)
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise errdefs.Unavailable("ttrpc: closed") from exc

    async def run(self) -> None:
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    break
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
        except _ProtocolViolation as exc:
            logger.warning("ttrpc: closing connection: %s", exc)
        except (ConnectionError, OSError):
            pass
        finally:
            self._closing = True
            # Requests cannot be answered without a connection: stop their handlers.
            for task in list(self._calls.values()):
                task.cancel()
            await self._wait_calls()
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    async def _wait_calls(self, timeout: float | None = None) -> None:
        """Waits for running calls (and those they start) without cancelling them."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while running := [t for t in (*self._calls.values(), *self._answers) if not t.done()]:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait(running, timeout=remaining)

    async def close(self, grace: float) -> None:
        """Lets running calls finish within ``grace`` seconds, then cancels the rest and
        closes the connection."""
        await self._wait_calls(grace)
        self._closing = True
        for task in list(self._calls.values()):
            task.cancel()
        self._writer.close()

    def _spawn(self, stream_id: int, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._calls[stream_id] = task

        # A done callback, not a finally: a task cancelled before its first step never
        # runs its body.
        def forget(_: asyncio.Task[None]) -> None:
            if self._calls.get(stream_id) is task:
                del self._calls[stream_id]
                self._streams.pop(stream_id, None)

        task.add_done_callback(forget)

    def _answer(self, stream_id: int, code: int, message: str) -> None:
        payload = _response(code, message)
        task = asyncio.create_task(self._send_quietly(stream_id, payload))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _send_quietly(self, stream_id: int, payload: bytes) -> None:
        with contextlib.suppress(errdefs.Unavailable):
            await self.send(stream_id, MessageType.RESPONSE, payload)

    def _dispatch(self, frame: Frame | OversizedFrame) -> None:
        if self._closing:
            return
        if isinstance(frame, OversizedFrame):
            self._answer(
                frame.stream_id,
                Code.RESOURCE_EXHAUSTED,
                f"message length {frame.length} exceed maximum message size of {MAX_MESSAGE}",
            )
            return
        if frame.type == MessageType.DATA:
            self._on_data(frame)
            return
        if frame.type != MessageType.REQUEST:
            return  # responses or unknown types from a client: ignored, as Go does
        if frame.stream_id % 2 != 1:
            self._answer(
                frame.stream_id,
                Code.INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams",
            )
            return
        if frame.stream_id <= self._seen_max_id or frame.stream_id in self._calls:
            raise _ProtocolViolation(f"stream id {frame.stream_id} reused")
        self._seen_max_id = frame.stream_id
        if self._server._closing:
            self._answer(frame.stream_id, Code.UNAVAILABLE, "ttrpc: server closed")
            return
        request = request_pb2.Request()
        try:
            request.ParseFromString(frame.payload)
        except DecodeError as exc:
            self._answer(frame.stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            return
        self._start(frame.stream_id, frame.flags, request)

    def _on_data(self, frame: Frame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if frame.stream_id in self._calls or frame.stream_id <= self._seen_max_id:
                return  # a late message on a finished or unary stream: dropped
            raise _ProtocolViolation(f"data on unknown stream {frame.stream_id}")
        if not frame.flags & Flags.NO_DATA:
            stream._deliver(frame.payload)
        if frame.flags & Flags.REMOTE_CLOSED:
            stream._deliver(None)

    def _context(self, request: request_pb2.Request) -> RequestContext:
        metadata: dict[str, list[str]] = {}
        for kv in request.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        deadline = None
        if request.timeout_nano > 0:
            deadline = asyncio.get_running_loop().time() + request.timeout_nano / 1e9
        return RequestContext(metadata, deadline, request.service, request.method)

    def _start(self, stream_id: int, flags: Flags, request: request_pb2.Request) -> None:
        # The stream is registered before any later frame is dispatched: data frames
        # often arrive in the same read as their request.
        stream: ServerStream | None = None
        service = self._server._services.get(request.service)
        stream_method = service.streams.get(request.method) if service else None
        if stream_method is not None:
            stream = ServerStream(self, stream_id, stream_method.request_type)
            self._streams[stream_id] = stream
            if request.payload or not flags & Flags.REMOTE_OPEN:
                stream._deliver(request.payload)
            if not flags & Flags.REMOTE_OPEN:
                stream._deliver(None)
        self._spawn(stream_id, self._handle(stream_id, request, self._context(request), stream))

    async def _handle(
        self,
        stream_id: int,
        request: request_pb2.Request,
        ctx: RequestContext,
        stream: ServerStream | None,
    ) -> None:
        service = self._server._services.get(request.service)
        stream_method = service.streams.get(request.method) if service else None
        unary = service.unary.get(request.method) if service else None
        token = namespaces.set_current(ctx.namespace)
        code, message, payload = Code.OK, "", b""
        try:
            async with asyncio.timeout_at(ctx.deadline):
                if stream_method is not None and stream is not None:
                    reply = await stream_method.handler(stream, ctx)
                    payload = reply.SerializeToString() if reply is not None else b""
                elif unary is not None:
                    request_type, handler = unary
                    message_in = request_type()
                    try:
                        message_in.ParseFromString(request.payload)
                    except DecodeError as exc:
                        raise errdefs.InvalidArgument(f"unmarshal request: {exc}") from exc
                    payload = (await handler(message_in, ctx)).SerializeToString()
                elif service is None:
                    code, message = Code.UNIMPLEMENTED, f"service {request.service}"
                else:
                    code, message = Code.UNIMPLEMENTED, f"method {request.method}"
        except asyncio.CancelledError:
            if self._closing:
                raise
            # cancelled from inside the handler: report it, as Go's context.Canceled
            code, message = status_of(asyncio.CancelledError())
        except Exception as exc:
            code, message = status_of(exc)
            if not isinstance(exc, errdefs.ContainerdError | TimeoutError):
                logger.error("ttrpc: %s/%s failed", request.service, request.method, exc_info=exc)
        finally:
            namespaces.reset(token)
        if len(payload) > MAX_MESSAGE:
            too_large = errdefs.InvalidArgument(f"response of {len(payload)} bytes is too large")
            code, message = status_of(too_large)
            payload = b""
        with contextlib.suppress(errdefs.Unavailable):
            await self.send(stream_id, MessageType.RESPONSE, _response(code, message, payload))


class Server:
    """A ttrpc server. Register services, then serve on one or more listening sockets."""

    def __init__(self) -> None:
        self._services: dict[str, _Service] = {}
        self._listeners: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._closing = False
        self._paths: list[Path] = []

    def register(
        self, service: str, methods: Mapping[str, tuple[type[Message], UnaryHandler]]
    ) -> None:
        """Adds unary methods of ``service`` (full proto name, e.g. containerd.task.v2.Task).

        Raises AlreadyExists if a method is registered twice."""
        entry = self._services.setdefault(service, _Service())
        for name, method in methods.items():
            if name in entry.unary or name in entry.streams:
                raise errdefs.AlreadyExists(f"ttrpc method {service}/{name}")
            entry.unary[name] = method

    def register_stream(self, service: str, methods: Mapping[str, StreamMethod]) -> None:
        """Adds streaming methods of ``service``; see the module docstring for semantics.

        Raises AlreadyExists if a method is registered twice."""
        entry = self._services.setdefault(service, _Service())
        for name, method in methods.items():
            if name in entry.unary or name in entry.streams:
                raise errdefs.AlreadyExists(f"ttrpc method {service}/{name}")
            entry.streams[name] = method

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.close()
            return
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            if task is not None:
                self._conn_tasks.discard(task)

    async def serve_unix(self, path: str | Path, *, mode: int = 0o600) -> None:
        """Binds and listens on a unix socket at ``path``; returns once listening.

        A stale socket file at ``path`` is replaced. Raises OSError if binding fails."""
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, mode)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self._paths.append(path)
        await self.serve_socket(sock)

    async def serve_socket(self, sock: socket.socket) -> None:
        """Serves on an already listening unix socket (a shim inherits one)."""
        sock.setblocking(False)
        listener = await asyncio.start_unix_server(self._on_connection, sock=sock)
        self._listeners.append(listener)

    async def close(self, grace: float = 5.0) -> None:
        """Stops accepting, lets in-flight calls finish for up to ``grace`` seconds,
        then closes every connection (their unfinished calls are cancelled)."""
        if self._closing:
            await self.wait_closed()
            return
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for path in self._paths:
            with contextlib.suppress(OSError):
                path.unlink()
        await asyncio.gather(*(conn.close(grace) for conn in list(self._connections)))
        if self._conn_tasks:
            await asyncio.gather(*list(self._conn_tasks), return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Returns once ``close`` has finished."""
        await self._closed.wait()
