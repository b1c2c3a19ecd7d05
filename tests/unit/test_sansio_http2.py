"""Frame-level tests of the sans-I/O HTTP/2 server connection (``pycontainerd.sansio.http2``).

Frames are built and parsed here with a codec of this file's own (and header blocks with
``hpack``), so a mistake shared by the module's encoder and decoder cannot hide.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycontainerd.sansio import http2
from pycontainerd.sansio.http2 import (
    DataReceived,
    GoAwayReceived,
    ProtocolError,
    RequestReceived,
    ServerConnection,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

Frame = tuple[int, int, int, bytes]  # type, flags, stream id, payload

REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/pkg.Service/Method"),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("containerd-namespace", "default"),
]


def f(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def settings_frame(*pairs: tuple[int, int]) -> bytes:
    return f(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(sid: int, n: int) -> bytes:
    return f(WINDOW_UPDATE, 0, sid, struct.pack(">I", n))


def parse(data: bytes) -> list[Frame]:
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a frame header cut short"
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big")
        assert sid >> 31 == 0, "the reserved bit is set"
        payload = data[pos + 9 : pos + 9 + length]
        assert len(payload) == length, "a frame payload cut short"
        frames.append((kind, flags, sid, payload))
        pos += 9 + length
    return frames


def decode(decoder: hpack.Decoder, block: bytes) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in decoder.decode(block)]


def sent(conn: ServerConnection) -> list[Frame]:
    return parse(conn.data_to_send())


def settings_of(payload: bytes) -> dict[int, int]:
    assert len(payload) % 6 == 0
    return dict(struct.unpack_from(">HI", payload, i) for i in range(0, len(payload), 6))


def goaway_code(frames: list[Frame]) -> int:
    goaways = [p for k, _, _, p in frames if k == GOAWAY]
    assert len(goaways) == 1, frames
    return int.from_bytes(goaways[0][4:8], "big")


class Client:
    """The peer: encodes header blocks with a dynamic table, as real clients do."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def headers(
        self, sid: int, end_stream: bool = False, extra: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        block = self.encoder.encode([*REQUEST, *extra])
        return f(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, block)


def connected(**kwargs: int) -> tuple[ServerConnection, Client]:
    """A connection past the preface and the SETTINGS exchange, output drained."""
    conn = ServerConnection(**kwargs)
    conn.initiate()
    conn.data_to_send()
    assert conn.receive(PREFACE + settings_frame() + f(SETTINGS, ACK, 0)) == []
    assert sent(conn) == [(SETTINGS, ACK, 0, b"")]
    return conn, Client()


def expect_error(conn: ServerConnection, data: bytes, code: int) -> list[Frame]:
    with pytest.raises(ProtocolError) as info:
        conn.receive(data)
    assert info.value.code == code, info.value
    frames = sent(conn)
    assert goaway_code(frames) == code
    # A failed connection takes nothing more and queues nothing more.
    assert conn.receive(f(PING, 0, 0, bytes(8))) == []
    assert conn.data_to_send() == b""
    return frames


# -- 10. preface, SETTINGS, PING --------------------------------------------------------


def test_initiate_queues_our_settings_and_connection_window() -> None:
    conn = ServerConnection(initial_window=1 << 20, max_header_list=8192, max_frame=1 << 20)
    conn.initiate()
    frames = sent(conn)
    kind, flags, sid, payload = frames[0]
    assert (kind, flags, sid) == (SETTINGS, 0, 0)
    ours = settings_of(payload)
    assert ours[http2.SETTINGS_INITIAL_WINDOW_SIZE] == 1 << 20
    assert ours[http2.SETTINGS_MAX_HEADER_LIST_SIZE] == 8192
    assert ours[http2.SETTINGS_MAX_FRAME_SIZE] == 1 << 20
    assert ours.get(http2.SETTINGS_ENABLE_PUSH, 0) == 0
    for kind, _, sid, payload in frames[1:]:
        assert (kind, sid) == (WINDOW_UPDATE, 0)
        assert int.from_bytes(payload, "big") > 0
    assert conn.data_to_send() == b""


def test_settings_exchange() -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.data_to_send()
    # The preface may come a byte at a time.
    for b in PREFACE:
        assert conn.receive(bytes((b,))) == []
    assert conn.data_to_send() == b""
    # The client's SETTINGS are acknowledged, once per frame.
    assert conn.receive(settings_frame((http2.SETTINGS_MAX_FRAME_SIZE, 32768))) == []
    assert conn.receive(settings_frame()) == []
    assert sent(conn) == [(SETTINGS, ACK, 0, b""), (SETTINGS, ACK, 0, b"")]
    # The client's ACK of ours needs no answer.
    assert conn.receive(f(SETTINGS, ACK, 0)) == []
    assert conn.data_to_send() == b""
    assert conn.max_frame == 32768
    # Unknown settings are ignored (RFC 9113 6.5.2).
    assert conn.receive(settings_frame((0x99, 7))) == []
    assert sent(conn) == [(SETTINGS, ACK, 0, b"")]


def test_ping_is_echoed_and_ping_ack_ignored() -> None:
    conn, _ = connected()
    assert conn.receive(f(PING, 0, 0, b"abcdefgh")) == []
    assert sent(conn) == [(PING, ACK, 0, b"abcdefgh")]
    assert conn.receive(f(PING, ACK, 0, b"12345678")) == []
    assert conn.data_to_send() == b""


def test_unknown_frame_types_and_priority_are_ignored() -> None:
    conn, _ = connected()
    assert conn.receive(f(0x42, 0xFF, 1, b"whatever") + f(PRIORITY, 0, 3, bytes(5))) == []
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n",
        PREFACE[:-1] + b"X",
        b"\x00" * 24,
        b"P" + b"\x00",
    ],
)
def test_bad_preface(data: bytes) -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.data_to_send()
    expect_error(conn, data, http2.PROTOCOL_ERROR)


def test_bad_preface_split() -> None:
    conn = ServerConnection()
    conn.initiate()
    conn.data_to_send()
    assert conn.receive(PREFACE[:10]) == []
    expect_error(conn, b"garbage-garbage-garbage", http2.PROTOCOL_ERROR)


def test_frame_larger_than_max_frame_size() -> None:
    conn, _ = connected(max_frame=16384)
    # Only the header: the size alone condemns the frame, before its payload arrives.
    expect_error(
        conn,
        (16385).to_bytes(3, "big") + bytes((DATA, 0)) + (1).to_bytes(4, "big"),
        http2.FRAME_SIZE_ERROR,
    )
    conn, client = connected(max_frame=16384)
    conn.receive(client.headers(1))
    sent(conn)
    assert conn.receive(f(DATA, 0, 1, bytes(16384))) == [DataReceived(1, bytes(16384), False)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (f(DATA, 0, 0, b"x"), http2.PROTOCOL_ERROR),
        (f(HEADERS, END_HEADERS, 0, b"\x82"), http2.PROTOCOL_ERROR),
        (f(HEADERS, END_HEADERS | END_STREAM, 2, b"\x82"), http2.PROTOCOL_ERROR),
        (f(DATA, 0, 7, b"idle"), http2.PROTOCOL_ERROR),
        (f(RST_STREAM, 0, 9, bytes(4)), http2.PROTOCOL_ERROR),
        (f(RST_STREAM, 0, 0, bytes(4)), http2.PROTOCOL_ERROR),
        (f(RST_STREAM, 0, 1, bytes(3)), http2.FRAME_SIZE_ERROR),
        (f(WINDOW_UPDATE, 0, 11, struct.pack(">I", 5)), http2.PROTOCOL_ERROR),
        (f(PING, 0, 0, b"short"), http2.FRAME_SIZE_ERROR),
        (f(PING, 0, 1, bytes(8)), http2.PROTOCOL_ERROR),
        (f(SETTINGS, 0, 1, b""), http2.PROTOCOL_ERROR),
        (f(SETTINGS, 0, 0, b"12345"), http2.FRAME_SIZE_ERROR),
        (f(SETTINGS, ACK, 0, bytes(6)), http2.FRAME_SIZE_ERROR),
        (settings_frame((http2.SETTINGS_ENABLE_PUSH, 2)), http2.PROTOCOL_ERROR),
        (settings_frame((http2.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)), http2.FLOW_CONTROL_ERROR),
        (settings_frame((http2.SETTINGS_MAX_FRAME_SIZE, 100)), http2.PROTOCOL_ERROR),
        (settings_frame((http2.SETTINGS_MAX_FRAME_SIZE, 1 << 24)), http2.PROTOCOL_ERROR),
        (window_update(0, 0), http2.PROTOCOL_ERROR),
        (window_update(0, (1 << 31) - 1), http2.FLOW_CONTROL_ERROR),
        (f(WINDOW_UPDATE, 0, 0, bytes(3)), http2.FRAME_SIZE_ERROR),
        (f(PUSH_PROMISE, END_HEADERS, 1, bytes(4)), http2.PROTOCOL_ERROR),
        (f(CONTINUATION, END_HEADERS, 1, b"\x82"), http2.PROTOCOL_ERROR),
        (f(GOAWAY, 0, 1, bytes(8)), http2.PROTOCOL_ERROR),
        (f(PRIORITY, 0, 0, bytes(5)), http2.PROTOCOL_ERROR),
        (f(PRIORITY, 0, 1, bytes(4)), http2.FRAME_SIZE_ERROR),
        (f(HEADERS, END_HEADERS | PADDED, 1, b"\x05\x82"), http2.PROTOCOL_ERROR),
        (f(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff\xff"), http2.COMPRESSION_ERROR),
        # A dynamic table size update after a field (RFC 7541 4.2; h2spec hpack/4.2/1).
        (f(HEADERS, END_HEADERS, 1, b"\x83\x20"), http2.COMPRESSION_ERROR),
    ],
    ids=[
        "data-on-stream-0",
        "headers-on-stream-0",
        "even-stream-id",
        "data-on-idle-stream",
        "rst-on-idle-stream",
        "rst-on-stream-0",
        "rst-wrong-length",
        "window-update-on-idle-stream",
        "ping-wrong-length",
        "ping-on-a-stream",
        "settings-on-a-stream",
        "settings-not-multiple-of-6",
        "settings-ack-with-payload",
        "enable-push-2",
        "initial-window-too-large",
        "max-frame-too-small",
        "max-frame-too-large",
        "window-update-0-on-connection",
        "connection-window-overflow",
        "window-update-wrong-length",
        "push-promise-from-client",
        "continuation-without-headers",
        "goaway-on-a-stream",
        "priority-on-stream-0",
        "priority-wrong-length",
        "padding-longer-than-frame",
        "bad-hpack",
        "table-size-update-after-a-field",
    ],
)
def test_connection_errors(data: bytes, code: int) -> None:
    conn, _ = connected()
    expect_error(conn, data, code)


def test_answers_to_frames_before_an_error_still_go_out() -> None:
    # The events of a failing read are lost with the connection, but the frames that
    # answer earlier frames (here a PING ACK) still go out before the GOAWAY.
    conn, _ = connected()
    frames = expect_error(
        conn, f(PING, 0, 0, b"pingpong") + f(DATA, 0, 0, b"x"), http2.PROTOCOL_ERROR
    )
    assert frames[0] == (PING, ACK, 0, b"pingpong")
    assert frames[-1][0] == GOAWAY


# -- streams ----------------------------------------------------------------------------


def test_request_data_and_end() -> None:
    conn, client = connected()
    events = conn.receive(client.headers(1) + f(DATA, 0, 1, b"hello") + f(DATA, END_STREAM, 1))
    assert events[0] == RequestReceived(1, REQUEST, False)
    assert events[1:] == [DataReceived(1, b"hello", False), DataReceived(1, b"", True)]
    # HPACK's dynamic table carries over between requests.
    events = conn.receive(client.headers(3, end_stream=True) + client.headers(5))
    assert events == [RequestReceived(3, REQUEST, True), RequestReceived(5, REQUEST, False)]
    assert conn.last_stream_id == 5


def test_headers_in_continuations_padding_and_priority() -> None:
    conn, client = connected()
    block = client.encoder.encode([*REQUEST, ("big", "v" * 3000)])
    parts = [block[:10], block[10:1000], block[1000:]]
    # HEADERS with padding and a priority field, then CONTINUATIONs.
    first = bytes((4,)) + bytes(5) + parts[0] + b"\x00" * 4
    data = (
        f(HEADERS, PADDED | PRIORITY_FLAG, 1, first)
        + f(CONTINUATION, 0, 1, parts[1])
        + f(CONTINUATION, END_HEADERS, 1, parts[2])
        + f(DATA, PADDED | END_STREAM, 1, b"\x03abc\x00\x00\x00")
    )
    events = conn.receive(data)
    assert events == [
        RequestReceived(1, [*REQUEST, ("big", "v" * 3000)], False),
        DataReceived(1, b"abc", True),
    ]


def test_continuation_interrupted_is_an_error() -> None:
    conn, client = connected()
    block = client.encoder.encode(REQUEST)
    expect_error(
        conn,
        f(HEADERS, 0, 1, block[:5]) + f(PING, 0, 0, bytes(8)),
        http2.PROTOCOL_ERROR,
    )
    conn, client = connected()
    block = client.encoder.encode(REQUEST)
    expect_error(
        conn,
        f(HEADERS, 0, 1, block[:5]) + f(CONTINUATION, END_HEADERS, 3, block[5:]),
        http2.PROTOCOL_ERROR,
    )


def test_header_list_too_large() -> None:
    conn, client = connected(max_header_list=1000)
    with pytest.raises(ProtocolError):
        conn.receive(client.headers(1, extra=[("x", "y" * 2000)]))
    assert goaway_code(sent(conn)) != http2.NO_ERROR


def test_trailers_end_the_request() -> None:
    conn, client = connected()
    conn.receive(client.headers(1) + f(DATA, 0, 1, b"abc"))
    events = conn.receive(
        f(HEADERS, END_HEADERS | END_STREAM, 1, client.encoder.encode([("x-t", "1")]))
    )
    assert events == [TrailersReceived(1)]


def test_stream_ids_must_increase() -> None:
    conn, client = connected()
    conn.receive(client.headers(5))
    # Stream 3 was closed implicitly by 5 (RFC 9113 5.1.1): a connection error, or at
    # least never a request.
    try:
        events = conn.receive(client.headers(3))
    except ProtocolError as exc:
        assert exc.code == http2.PROTOCOL_ERROR
    else:
        assert events == []
        assert not conn.is_open(3)


def test_rst_stream_and_goaway_from_client() -> None:
    conn, client = connected()
    conn.receive(client.headers(1) + client.headers(3))
    events = conn.receive(f(RST_STREAM, 0, 1, struct.pack(">I", http2.CANCEL)))
    assert events == [StreamReset(1, http2.CANCEL)]
    assert not conn.is_open(1) and conn.is_open(3)
    # Late frames on the reset stream are dropped, not errors.
    assert conn.receive(f(DATA, 0, 1, b"late") + window_update(1, 10)) == []
    assert conn.receive(f(RST_STREAM, 0, 1, bytes(4))) == []
    events = conn.receive(f(GOAWAY, 0, 0, struct.pack(">II", 3, 0) + b"bye"))
    assert events == [GoAwayReceived(3, 0)]


def test_data_after_end_stream_resets_the_stream() -> None:
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True))
    sent(conn)
    events = conn.receive(f(DATA, 0, 1, b"more"))
    assert events == [StreamReset(1, http2.STREAM_CLOSED)]
    assert sent(conn) == [(RST_STREAM, 0, 1, struct.pack(">I", http2.STREAM_CLOSED))]


def test_response_headers_data_and_end() -> None:
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True))
    sent(conn)
    block = http2.literal_header(b":status", b"200") + http2.literal_header(b"a", b"b")
    conn.send_headers(1, block)
    assert conn.send_data(1, b"payload") == 7
    conn.send_headers(1, http2.literal_header(b"grpc-status", b"0"), end_stream=True)
    frames = sent(conn)
    assert [(k, fl, s) for k, fl, s, _ in frames] == [
        (HEADERS, END_HEADERS, 1),
        (DATA, 0, 1),
        (HEADERS, END_HEADERS | END_STREAM, 1),
    ]
    decoder = hpack.Decoder()
    assert decode(decoder, frames[0][3]) == [(":status", "200"), ("a", "b")]
    assert frames[1][3] == b"payload"
    assert decode(decoder, frames[2][3]) == [("grpc-status", "0")]
    # Both sides ended: the stream is gone and takes no more.
    assert not conn.is_open(1)
    assert conn.send_data(1, b"more") == 0
    assert conn.data_to_send() == b""


def test_large_header_block_is_split_into_continuations() -> None:
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True))
    sent(conn)
    block = http2.literal_header(b"grpc-message", b"m" * 40000)
    conn.send_headers(1, block, end_stream=True)
    frames = sent(conn)
    assert frames[0][0] == HEADERS and frames[0][1] & END_STREAM
    assert all(k == CONTINUATION for k, _, _, _ in frames[1:])
    assert [bool(fl & END_HEADERS) for _, fl, _, _ in frames] == [False] * (len(frames) - 1) + [
        True
    ]
    assert all(len(p) <= 16384 for _, _, _, p in frames)
    assert decode(hpack.Decoder(), b"".join(p for _, _, _, p in frames)) == [
        ("grpc-message", "m" * 40000)
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"a", b""), (b"grpc-message", b"x" * 126), (b"y" * 127, b"z" * 128), (b"k", b"v" * 70000)],
)
def test_literal_header_round_trip(name: bytes, value: bytes) -> None:
    assert hpack.Decoder(max_header_list_size=1 << 20).decode(
        http2.literal_header(name, value), raw=True
    ) == [(name, value)]


# -- flow control -----------------------------------------------------------------------


def test_send_data_respects_windows_and_frame_size() -> None:
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True))
    sent(conn)
    data = bytes(range(256)) * 1000  # 256000 bytes
    n = conn.send_data(1, data)
    assert n == 65535  # the peer's default stream and connection windows
    frames = sent(conn)
    assert all(k == DATA and len(p) <= 16384 for k, _, _, p in frames)
    assert b"".join(p for _, _, _, p in frames) == data[:n]
    assert conn.send_window(1) == 0
    assert conn.send_data(1, data[n:]) == 0
    assert conn.data_to_send() == b""

    # The stream's window alone is not enough: the connection's is shut too.
    assert conn.receive(window_update(1, 100000)) == [WindowOpened(1)]
    assert conn.send_data(1, data[n:]) == 0
    assert conn.receive(window_update(0, 1000)) == [WindowOpened(0)]
    assert conn.send_data(1, data[n:]) == 1000
    n += 1000
    sent(conn)

    # A bigger initial window from SETTINGS applies to open streams.
    conn.receive(window_update(0, 1 << 20))
    assert conn.receive(settings_frame((http2.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20))) == [
        WindowOpened(0)
    ]
    rest = data[n:]
    assert conn.send_data(1, rest, end_stream=True) == len(rest)
    frames = [fr for fr in sent(conn) if fr[0] == DATA]
    assert b"".join(p for _, _, _, p in frames) == rest
    assert frames[-1][1] & END_STREAM and not any(fl & END_STREAM for _, fl, _, _ in frames[:-1])
    assert not conn.is_open(1)


def test_send_data_obeys_a_larger_peer_frame_size() -> None:
    conn, client = connected()
    conn.receive(
        settings_frame(
            (http2.SETTINGS_MAX_FRAME_SIZE, 65536), (http2.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)
        )
    )
    conn.receive(window_update(0, 1 << 20) + client.headers(1, end_stream=True))
    sent(conn)
    assert conn.send_data(1, bytes(200000)) == 200000
    sizes = [len(p) for k, _, _, p in sent(conn) if k == DATA]
    assert max(sizes) == 65536 and sum(sizes) == 200000


def test_empty_data_with_end_stream() -> None:
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True))
    sent(conn)
    assert conn.send_data(1, b"", end_stream=True) == 0
    assert sent(conn) == [(DATA, END_STREAM, 1, b"")]
    assert not conn.is_open(1)


def test_end_stream_on_a_negative_window() -> None:
    # A smaller INITIAL_WINDOW_SIZE can leave a stream's window below zero (RFC 9113
    # 6.9.2). An empty DATA frame costs no window: END_STREAM must still go, once.
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True))
    assert conn.send_data(1, b"x" * 1000) == 1000
    conn.receive(settings_frame((http2.SETTINGS_INITIAL_WINDOW_SIZE, 0)))
    sent(conn)
    assert conn.send_window(1) < 0
    conn._out = _Bounded(conn._out)  # turns a runaway loop into a failure
    assert conn.send_data(1, b"more") == 0
    assert conn.send_data(1, b"", end_stream=True) == 0
    assert sent(conn) == [(DATA, END_STREAM, 1, b"")]
    assert not conn.is_open(1)


class _Bounded(list[bytes]):
    """The connection's output queue, failing once it holds ``limit`` frames."""

    def __init__(self, items: list[bytes], limit: int = 100) -> None:
        super().__init__(items)
        self.limit = limit

    def append(self, item: bytes) -> None:
        if len(self) >= self.limit:
            raise AssertionError(f"runaway: {self.limit} frames queued")
        super().append(item)

    def clear(self) -> None:
        del self[:]


def test_stream_window_overflow_resets_only_that_stream() -> None:
    conn, client = connected()
    conn.receive(client.headers(1, end_stream=True) + client.headers(3, end_stream=True))
    sent(conn)
    events = conn.receive(window_update(1, (1 << 31) - 1))
    assert events == [StreamReset(1, http2.FLOW_CONTROL_ERROR)]
    assert sent(conn) == [(RST_STREAM, 0, 1, struct.pack(">I", http2.FLOW_CONTROL_ERROR))]
    assert conn.is_open(3)
    assert conn.receive(window_update(3, 0)) == [StreamReset(3, http2.PROTOCOL_ERROR)]


def test_receive_windows_are_refilled() -> None:
    window = 65536
    conn, client = connected(initial_window=window, connection_window=1 << 20)
    conn.receive(client.headers(1))
    sent(conn)
    chunk = bytes(16384)
    # The stream's window is refilled only as the application consumes.
    for _ in range(4):
        conn.receive(f(DATA, 0, 1, chunk))
    assert [fr for fr in sent(conn) if fr[2] == 1] == []
    conn.consumed(1, 4 * 16384)
    updates = [fr for fr in sent(conn) if fr[0] == WINDOW_UPDATE and fr[2] == 1]
    assert sum(int.from_bytes(p, "big") for *_, p in updates) == 4 * 16384
    # More than the window without consuming: a stream error, the connection lives.
    conn.receive(client.headers(3))
    for _ in range(4):
        assert conn.receive(f(DATA, 0, 3, chunk)) != []
    assert conn.receive(f(DATA, 0, 3, b"x")) == [StreamReset(3, http2.FLOW_CONTROL_ERROR)]
    assert (RST_STREAM, 0, 3, struct.pack(">I", http2.FLOW_CONTROL_ERROR)) in sent(conn)


def test_connection_window_is_refilled_and_enforced() -> None:
    conn, client = connected(initial_window=1 << 20, connection_window=1 << 20)
    conn.receive(client.headers(1))
    sent(conn)
    total = 0
    chunk = bytes(16384)
    # The connection's window comes back without any consumed() call; 4 MiB go through.
    for _ in range(256):
        conn.receive(f(DATA, 0, 1, chunk))
        total += len(chunk)
        conn.consumed(1, len(chunk))
    updates = [fr for fr in sent(conn) if fr[0] == WINDOW_UPDATE and fr[2] == 0]
    assert sum(int.from_bytes(p, "big") for *_, p in updates) >= total - (1 << 20)

    # A client ignoring the connection window.
    conn, client = connected(initial_window=1 << 20, connection_window=65535)
    conn.receive(client.headers(1))
    sent(conn)
    # (The window is given back as data arrives, so only one frame can overrun it.)
    expect_error(conn, f(DATA, 0, 1, bytes(65536)), http2.FLOW_CONTROL_ERROR)


def test_goaway_refuses_new_streams() -> None:
    conn, client = connected()
    conn.receive(client.headers(1))
    conn.goaway()
    frames = sent(conn)
    assert frames[0][0] == GOAWAY
    assert frames[0][3][:8] == struct.pack(">II", 1, http2.NO_ERROR)
    assert conn.receive(client.headers(3, end_stream=True)) == []
    assert sent(conn) == [(RST_STREAM, 0, 3, struct.pack(">I", http2.REFUSED_STREAM))]
    # The open stream carries on.
    assert conn.receive(f(DATA, END_STREAM, 1, b"x")) == [DataReceived(1, b"x", True)]
    conn.goaway()
    assert conn.data_to_send() == b""  # only one GOAWAY


def test_max_concurrent_streams() -> None:
    conn, client = connected(max_concurrent_streams=2)
    conn.receive(client.headers(1) + client.headers(3))
    sent(conn)
    assert conn.receive(client.headers(5)) == []
    assert sent(conn) == [(RST_STREAM, 0, 5, struct.pack(">I", http2.REFUSED_STREAM))]
    conn.receive(f(RST_STREAM, 0, 1, bytes(4)))
    assert conn.receive(client.headers(7)) == [RequestReceived(7, REQUEST, False)]


def test_reset_by_us() -> None:
    conn, client = connected()
    conn.receive(client.headers(1))
    sent(conn)
    conn.reset(1, http2.CANCEL)
    assert sent(conn) == [(RST_STREAM, 0, 1, struct.pack(">I", http2.CANCEL))]
    assert conn.receive(f(DATA, END_STREAM, 1, b"late")) == []
    conn.reset(1)
    assert conn.data_to_send() == b""


# -- 11. fuzz ---------------------------------------------------------------------------

# The kinds weighted to the known ones, stream ids to the few a sequence can make sense of.
kinds = st.one_of(st.integers(0, 10), st.integers(0, 255))
stream_ids = st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7]), st.integers(0, (1 << 32) - 1))
random_frames = st.builds(
    lambda kind, flags, sid, payload: f(kind, flags, sid & 0xFFFFFFFF, payload),
    kinds,
    st.integers(0, 255),
    stream_ids,
    st.binary(max_size=300),
)


def _valid_headers(sid: int, end: bool) -> bytes:
    return f(
        HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, hpack.Encoder().encode(REQUEST)
    )


valid_frames = st.one_of(
    st.builds(_valid_headers, st.sampled_from([1, 3, 5, 7]), st.booleans()),
    st.builds(
        lambda s, d, e: f(DATA, END_STREAM if e else 0, s, d),
        st.sampled_from([1, 3, 5]),
        st.binary(max_size=300),
        st.booleans(),
    ),
    st.builds(
        window_update,
        st.sampled_from([0, 1, 3]),
        st.one_of(st.integers(0, 1 << 16), st.integers(0, 1 << 31)),
    ),
    st.builds(lambda s: f(RST_STREAM, 0, s, bytes(4)), st.sampled_from([1, 3, 5])),
    st.builds(
        lambda n: settings_frame((http2.SETTINGS_INITIAL_WINDOW_SIZE, n)),
        st.one_of(st.integers(0, 100), st.just(1 << 20)),
    ),
    st.just(f(PING, 0, 0, bytes(8))),
)
# Most sequences open streams 1 and 3 first, so later frames find open streams.
frame_lists = st.builds(
    lambda opened, rest: [*opened, *rest],
    st.sampled_from(
        [[], [_valid_headers(1, False)], [_valid_headers(1, False), _valid_headers(3, True)]]
    ),
    st.lists(st.one_of(random_frames, valid_frames), max_size=25),
)


def _run(chunks: list[bytes], app: bool) -> tuple[list[object], int | None, bytes]:
    """Feed ``chunks``: the events, the ProtocolError's code (or None), the output.
    With ``app``, act like a server between reads (consume data, answer requests)."""
    conn = ServerConnection(max_frame=16384, max_header_list=4096)
    conn.initiate()
    conn.data_to_send()
    conn._out = _Bounded(conn._out, limit=5000)  # a runaway loop fails, not swaps
    events: list[object] = []
    error = None
    out = b""
    for chunk in chunks:
        try:
            new = conn.receive(chunk)
        except ProtocolError as exc:
            error = exc.code
            out += conn.data_to_send()
            break
        events.extend(new)
        if app:
            for ev in new:
                if isinstance(ev, DataReceived):
                    conn.consumed(ev.stream_id, len(ev.data))
                elif isinstance(ev, RequestReceived | WindowOpened) and conn.is_open(ev.stream_id):
                    conn.send_data(ev.stream_id, b"r" * 70000)
                elif isinstance(ev, TrailersReceived):
                    conn.send_headers(ev.stream_id, b"\x88", end_stream=True)
                if isinstance(ev, DataReceived) and ev.end_stream:
                    conn.send_data(ev.stream_id, b"", end_stream=True)
        out += conn.data_to_send()
    frames = parse(out)  # whatever we queued is well-formed framing
    if error is not None:
        assert goaway_code(frames) == error
    return events, error, out


fuzz_settings = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@fuzz_settings
@given(frame_lists, st.data())
def test_fuzz_random_frames_split_anywhere(frames: list[bytes], data: st.DataObject) -> None:
    stream = PREFACE + settings_frame() + b"".join(frames)
    whole = _run([stream], app=False)
    # The same bytes cut at random points: the same events, error and output.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    split = _run(pieces, app=False)
    assert split[1] == whole[1]
    assert split[2] == whole[2]
    if whole[1] is None:
        assert split[0] == whole[0]


@fuzz_settings
@given(frame_lists)
def test_fuzz_random_frames_with_an_application(frames: list[bytes]) -> None:
    # One frame per read, with the application acting in between.
    _run([PREFACE + settings_frame(), *frames], app=True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_raw_bytes_after_preface(junk: bytes) -> None:
    conn = ServerConnection(max_frame=16384)
    conn.initiate()
    try:
        conn.receive(PREFACE + junk)
    except ProtocolError as exc:
        assert goaway_code(parse(conn.data_to_send())) == exc.code
