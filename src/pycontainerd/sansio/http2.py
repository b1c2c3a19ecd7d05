"""The server side of an HTTP/2 connection (RFC 9113), sans I/O, as gRPC uses it.

Bytes go in through ``receive`` and come back as events; what the connection has to say
(settings, acknowledgements, window updates, the application's frames) collects in a
buffer that ``data_to_send`` empties. Only what a gRPC server needs is here: no server
push, no priorities (PRIORITY frames and fields are read and ignored), header blocks
decoded by ``header_compression`` and encoded by the application as literals
(``literal_header``), so our side never keeps a dynamic table.

Flow control: the connection's receive window is refilled as data arrives; a stream's
only when the application says it has consumed the data (``consumed``), so a client
streaming faster than a handler reads is held back by its window. Outgoing DATA is cut to
the peer's frame size and both send windows (``send_data`` returns how much went).

A connection error raises ``ProtocolError`` after queuing GOAWAY; the caller sends what
is queued and closes. A stream error resets that stream and is reported as
``StreamReset`` like a client's reset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pycontainerd.sansio.header_compression import HeaderDecoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTINGS_HEADER_TABLE_SIZE = 1
SETTINGS_ENABLE_PUSH = 2
SETTINGS_MAX_CONCURRENT_STREAMS = 3
SETTINGS_INITIAL_WINDOW_SIZE = 4
SETTINGS_MAX_FRAME_SIZE = 5
SETTINGS_MAX_HEADER_LIST_SIZE = 6

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = (1 << 31) - 1
_HEADER = struct.Struct(">HBBBI")  # length (24 bits as H + B), type, flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer broke the protocol; GOAWAY with ``code`` is queued."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    headers: list[tuple[str, str]]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    """A second header block on a stream (trailers): it ends the request."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset the stream, or we did because it broke a stream rule."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More may be sent: on ``stream_id``, or on every stream when it is 0."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: int


Event = (
    RequestReceived | TrailersReceived | DataReceived | StreamReset | WindowOpened | GoAwayReceived
)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_header(name: bytes, value: bytes) -> bytes:
    """One header as an HPACK literal without indexing (no dynamic table on our side)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


def literal_header_indexed_name(index: int, value: bytes) -> bytes:
    """A literal without indexing whose name is static table entry ``index``."""
    return _hpack_int(index, 4, 0) + _hpack_int(len(value), 7, 0) + value


@dataclass(slots=True)
class _Stream:
    send_window: int
    recv_window: int
    unacked: int = 0  # consumed bytes not yet given back with WINDOW_UPDATE
    remote_closed: bool = False
    local_closed: bool = False


@dataclass
class _HeaderBlock:
    stream_id: int
    end_stream: bool
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class ServerConnection:
    """One client connection. Not thread-safe; one caller feeds and drains it."""

    def __init__(
        self,
        *,
        initial_window: int = 1 << 20,
        connection_window: int = 16 << 20,
        max_frame: int = 1 << 20,
        max_header_list: int = 1 << 20,
        max_concurrent_streams: int = 1000,
    ) -> None:
        self._out: list[bytes] = []
        self._buf = b""
        self._preface_seen = False
        self._decoder = HeaderDecoder(max_header_list=max_header_list)
        self._max_header_list = max_header_list
        self._local_initial_window = initial_window
        self._local_max_frame = max_frame
        self._max_streams = max_concurrent_streams
        self._conn_window_target = connection_window
        self._conn_recv_window = DEFAULT_WINDOW
        self._conn_recv_unacked = 0
        self._conn_send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._header_block: _HeaderBlock | None = None
        self._goaway_sent = False
        self._closed = False

    # -- state the application reads --------------------------------------------------

    @property
    def last_stream_id(self) -> int:
        return self._last_stream_id

    @property
    def max_frame(self) -> int:
        return self._peer_max_frame

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return min(stream.send_window, self._conn_send_window)

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    # -- output -------------------------------------------------------------------------

    def initiate(self) -> None:
        settings = b"".join(
            _SETTING.pack(k, v)
            for k, v in (
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_MAX_CONCURRENT_STREAMS, self._max_streams),
                (SETTINGS_INITIAL_WINDOW_SIZE, self._local_initial_window),
                (SETTINGS_MAX_FRAME_SIZE, self._local_max_frame),
                (SETTINGS_MAX_HEADER_LIST_SIZE, self._max_header_list),
            )
        )
        self._out.append(frame(SETTINGS, 0, 0, settings))
        grow = self._conn_window_target - DEFAULT_WINDOW
        if grow > 0:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(grow)))
            self._conn_recv_window += grow

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """Queue an encoded header block (split into CONTINUATION frames if needed)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        flags = FLAG_END_STREAM if end_stream else 0
        size = self._peer_max_frame
        if len(block) <= size:
            self._out.append(frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, block))
        else:
            chunks = [block[i : i + size] for i in range(0, len(block), size)]
            self._out.append(frame(HEADERS, flags, stream_id, chunks[0]))
            for i, chunk in enumerate(chunks[1:], 1):
                last = FLAG_END_HEADERS if i == len(chunks) - 1 else 0
                self._out.append(frame(CONTINUATION, last, stream_id, chunk))
        if end_stream:
            self._end_local(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Queue as much of ``data`` as the windows allow; returns how many bytes.
        ``end_stream`` applies only if all of it went."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        total = len(data)
        if total == 0:
            if end_stream:  # an empty DATA frame needs no window
                self._out.append(frame(DATA, FLAG_END_STREAM, stream_id))
                self._end_local(stream_id, stream)
            return 0
        sent = 0
        size = self._peer_max_frame
        while sent < total:
            n = min(total - sent, size, stream.send_window, self._conn_send_window)
            if n <= 0:
                break
            last = end_stream and sent + n == total
            chunk = bytes(data[sent : sent + n])
            self._out.append(frame(DATA, FLAG_END_STREAM if last else 0, stream_id, chunk))
            stream.send_window -= n
            self._conn_send_window -= n
            sent += n
            if last:
                self._end_local(stream_id, stream)
                break
        return sent

    def consumed(self, stream_id: int, n: int) -> None:
        """The application used ``n`` bytes of the stream's data: open its window again."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed or n <= 0:
            return
        stream.unacked += n
        if stream.unacked >= self._local_initial_window // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked)))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def goaway(self, code: int = NO_ERROR, debug: bytes = b"") -> None:
        """Refuse new streams from now on; the open ones go on."""
        if not self._goaway_sent:
            self._goaway_sent = True
            payload = _U32.pack(self._last_stream_id) + _U32.pack(code) + debug
            self._out.append(frame(GOAWAY, 0, 0, payload))

    def _end_local(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self._streams[stream_id]

    def _end_remote(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self._streams[stream_id]

    # -- input --------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Parse ``data``; the events it completes. Raises ProtocolError."""
        if self._closed:
            return []
        buf = self._buf + data if self._buf else data
        events: list[Event] = []
        try:
            pos = 0
            if not self._preface_seen:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._buf = buf
                    return events
                if buf[: len(PREFACE)] != PREFACE:
                    raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._preface_seen = True
                pos = len(PREFACE)
            end = len(buf)
            while end - pos >= 9:
                hi, lo, kind, flags, stream_id = _HEADER.unpack_from(buf, pos)
                length = hi << 8 | lo
                if length > self._local_max_frame:
                    raise ProtocolError(FRAME_SIZE_ERROR, f"frame of {length} bytes is too large")
                if end - pos - 9 < length:
                    break
                payload = buf[pos + 9 : pos + 9 + length]
                pos += 9 + length
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload, events)
            self._buf = buf[pos:]
        except ProtocolError as exc:
            self._fail(exc)
            raise
        return events

    def _fail(self, exc: ProtocolError) -> None:
        self._closed = True
        self._buf = b""
        if not self._goaway_sent:
            self._goaway_sent = True
            payload = _U32.pack(self._last_stream_id) + _U32.pack(exc.code) + str(exc).encode()
            self._out.append(frame(GOAWAY, 0, 0, payload[:1024]))

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        block = self._header_block
        if block is not None and (kind != CONTINUATION or sid != block.stream_id):
            raise ProtocolError(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if kind == DATA:
            self._data(flags, sid, payload, events)
        elif kind == HEADERS:
            self._headers(flags, sid, payload, events)
        elif kind == CONTINUATION:
            if block is None:
                raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._add_to_block(block, payload)
            if flags & FLAG_END_HEADERS:
                self._header_block = None
                self._header_block_done(block, events)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload, events)
        elif kind == PING:
            if sid != 0:
                raise ProtocolError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & FLAG_ACK:
                self._out.append(frame(PING, FLAG_ACK, 0, payload))
        elif kind == RST_STREAM:
            if sid == 0:
                raise ProtocolError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ProtocolError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            if sid > self._last_stream_id:
                raise ProtocolError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            if self._streams.pop(sid, None) is not None:
                events.append(StreamReset(sid, _U32.unpack(payload)[0]))
        elif kind == GOAWAY:
            if sid != 0 or len(payload) < 8:
                raise ProtocolError(PROTOCOL_ERROR, "bad GOAWAY frame")
            last, code = struct.unpack_from(">II", payload)
            events.append(GoAwayReceived(last & 0x7FFFFFFF, code))
        elif kind == PRIORITY:
            if sid == 0:
                raise ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise ProtocolError(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "a client may not push")
        # Unknown frame types are ignored (RFC 9113 section 4.1).

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # flow control counts padding too
        self._conn_recv_window -= size
        if self._conn_recv_window < 0:
            raise ProtocolError(FLOW_CONTROL_ERROR, "connection flow-control window exceeded")
        self._conn_recv_unacked += size
        if self._conn_recv_unacked >= self._conn_window_target // 2:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_recv_unacked)))
            self._conn_recv_window += self._conn_recv_unacked
            self._conn_recv_unacked = 0
        data = _unpad(flags, payload)
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._last_stream_id:
                raise ProtocolError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we reset or finished: late data is dropped
        if stream.remote_closed:
            self.reset(sid, STREAM_CLOSED)
            events.append(StreamReset(sid, STREAM_CLOSED))
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.reset(sid, FLOW_CONTROL_ERROR)
            events.append(StreamReset(sid, FLOW_CONTROL_ERROR))
            return
        # Padding is never handed to the application: give it back at once.
        if size != len(data):
            self.consumed(sid, size - len(data))
        end = bool(flags & FLAG_END_STREAM)
        if end:
            self._end_remote(sid, stream)
        events.append(DataReceived(sid, data, end))

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
        data = _unpad(flags, payload)
        if flags & FLAG_PRIORITY:
            if len(data) < 5:
                raise ProtocolError(PROTOCOL_ERROR, "HEADERS priority field cut short")
            data = data[5:]
        block = _HeaderBlock(sid, bool(flags & FLAG_END_STREAM))
        self._add_to_block(block, data)
        if flags & FLAG_END_HEADERS:
            self._header_block_done(block, events)
        else:
            self._header_block = block

    def _add_to_block(self, block: _HeaderBlock, data: bytes) -> None:
        block.size += len(data)
        if block.size > self._max_header_list:
            raise ProtocolError(PROTOCOL_ERROR, "header block too large")
        block.parts.append(data)

    def _header_block_done(self, block: _HeaderBlock, events: list[Event]) -> None:
        try:
            decoded = self._decoder.decode(b"".join(block.parts))
        except Exception as exc:  # DecodeError, or whatever a broken Huffman string gives
            raise ProtocolError(
                COMPRESSION_ERROR, f"header block cannot be decoded: {exc}"
            ) from None
        sid = block.stream_id
        stream = self._streams.get(sid)
        if stream is not None:  # trailers
            if not block.end_stream or stream.remote_closed:
                raise ProtocolError(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._end_remote(sid, stream)
            events.append(TrailersReceived(sid))
            return
        if sid <= self._last_stream_id:
            if sid % 2 == 1:
                return  # a stream that is already closed (we reset it): dropped
            raise ProtocolError(PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        if sid % 2 == 0:
            raise ProtocolError(PROTOCOL_ERROR, f"client stream id {sid} is even")
        self._last_stream_id = sid
        if self._goaway_sent:
            self._out.append(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        if len(self._streams) >= self._max_streams:
            self._out.append(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        stream = _Stream(self._peer_initial_window, self._local_initial_window)
        self._streams[sid] = stream
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in decoded]
        if block.end_stream:
            stream.remote_closed = True
        events.append(RequestReceived(sid, headers, block.end_stream))

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid != 0:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        opened = False
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "initial window size too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError(FLOW_CONTROL_ERROR, "stream window overflow")
                opened = opened or delta > 0
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= (1 << 24) - 1:
                    raise ProtocolError(PROTOCOL_ERROR, f"bad max frame size {value}")
                self._peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise ProtocolError(PROTOCOL_ERROR, "bad ENABLE_PUSH value")
            # The others limit what we send: our header blocks are never indexed and
            # are small; we open no streams.
        self._out.append(frame(SETTINGS, FLAG_ACK, 0))
        if opened:
            events.append(WindowOpened(0))

    def _window_update(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE frame")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._conn_send_window += increment
            if self._conn_send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow")
            events.append(WindowOpened(0))
            return
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._last_stream_id:
                raise ProtocolError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if increment == 0:
            self.reset(sid, PROTOCOL_ERROR)
            events.append(StreamReset(sid, PROTOCOL_ERROR))
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self.reset(sid, FLOW_CONTROL_ERROR)
            events.append(StreamReset(sid, FLOW_CONTROL_ERROR))
            return
        events.append(WindowOpened(sid))


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & FLAG_PADDED:
        return payload
    if not payload:
        raise ProtocolError(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
