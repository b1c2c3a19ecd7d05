"""ttrpc framing: the header layout, chunking, oversized frames and fuzzed input."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pycontainerd.sansio.ttrpc as sansio_ttrpc
from pycontainerd.sansio.ttrpc import (
    HEADER_SIZE,
    MAX_MESSAGE,
    Flags,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    StreamIds,
    encode_frame,
)


def test_header_layout_is_big_endian_length_stream_type_flags() -> None:
    data = encode_frame(0x01020304, MessageType.RESPONSE, b"abc", Flags.REMOTE_CLOSED)
    assert data == b"\x00\x00\x00\x03\x01\x02\x03\x04\x02\x01abc"
    assert HEADER_SIZE == 10
    assert MAX_MESSAGE == 4 * 1024 * 1024


def test_encode_rejects_oversized_payload_and_bad_ids() -> None:
    encode_frame(1, MessageType.REQUEST, b"\0" * MAX_MESSAGE)  # exactly the limit is fine
    with pytest.raises(ValueError):
        encode_frame(1, MessageType.REQUEST, b"\0" * (MAX_MESSAGE + 1))
    with pytest.raises(ValueError):
        encode_frame(1 << 32, MessageType.REQUEST, b"")
    with pytest.raises(ValueError):
        encode_frame(-1, MessageType.REQUEST, b"")


def _frames() -> list[Frame]:
    return [
        Frame(1, MessageType.REQUEST, Flags(0), b"first request"),
        Frame(1, MessageType.RESPONSE, Flags(0), b""),
        Frame(3, MessageType.DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA, b""),
        Frame(0xFFFFFFFF, MessageType.REQUEST, Flags.REMOTE_OPEN, bytes(range(256)) * 4),
    ]


def _encode(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.stream_id, f.type, f.payload, f.flags) for f in frames)


def test_many_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(_encode(_frames())) == _frames()
    assert decoder.pending == 0


def test_split_at_every_byte_boundary() -> None:
    data = _encode(_frames())
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == _frames(), cut


def test_byte_by_byte() -> None:
    decoder = FrameDecoder()
    out: list[Frame | OversizedFrame] = []
    for byte in _encode(_frames()):
        out += decoder.feed(bytes([byte]))
    assert out == _frames()


def _oversized_header(stream_id: int, length: int) -> bytes:
    return struct.pack(">IIBB", length, stream_id, MessageType.REQUEST, 0)


def test_oversized_frame_is_reported_and_its_payload_skipped() -> None:
    length = MAX_MESSAGE + 5
    after = encode_frame(7, MessageType.REQUEST, b"next")
    data = _oversized_header(5, length) + b"x" * length + after
    decoder = FrameDecoder()
    assert decoder.feed(data) == [
        OversizedFrame(5, MessageType.REQUEST, length),
        Frame(7, MessageType.REQUEST, Flags(0), b"next"),
    ]


def test_oversized_payload_skipped_across_feeds_without_buffering() -> None:
    length = MAX_MESSAGE + 1
    decoder = FrameDecoder()
    assert decoder.feed(_oversized_header(9, length)) == [
        OversizedFrame(9, MessageType.REQUEST, length)
    ]
    chunk = b"y" * 65536
    remaining = length
    while remaining > len(chunk):
        assert decoder.feed(chunk) == []
        remaining -= len(chunk)
        assert decoder.pending == remaining  # counted, not stored
    tail = encode_frame(11, MessageType.REQUEST, b"ok")
    assert decoder.feed(b"y" * remaining + tail) == [
        Frame(11, MessageType.REQUEST, Flags(0), b"ok")
    ]


def test_unknown_type_and_flags_are_passed_through_raw() -> None:
    data = struct.pack(">IIBB", 2, 1, 0x7F, 0xF0) + b"hi"
    (frame,) = FrameDecoder().feed(data)
    assert isinstance(frame, Frame)
    assert frame.type == 0x7F and not isinstance(frame.type, MessageType)
    assert int(frame.flags) == 0xF0


def test_stream_ids_are_odd_and_increasing() -> None:
    ids = StreamIds()
    assert [ids.allocate() for _ in range(4)] == [1, 3, 5, 7]


def test_sansio_module_does_no_io() -> None:
    tree = ast.parse(Path(sansio_ttrpc.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "os", "subprocess", "grpc", "selectors"}


frame_strategy = st.builds(
    Frame,
    stream_id=st.integers(0, 0xFFFFFFFF),
    type=st.sampled_from(list(MessageType)),
    flags=st.sampled_from([Flags(0), Flags.REMOTE_CLOSED, Flags.REMOTE_OPEN, Flags(5)]),
    payload=st.binary(max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(frame_strategy, max_size=8), cuts=st.lists(st.integers(0, 4000)))
def test_fuzz_round_trip_under_any_chunking(frames: list[Frame], cuts: list[int]) -> None:
    data = _encode(frames)
    decoder = FrameDecoder()
    out: list[Frame | OversizedFrame] = []
    previous = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        out += decoder.feed(data[previous:cut])
        previous = cut
    assert out == frames
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_arbitrary_bytes_never_crash(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            if isinstance(frame, Frame):
                assert len(frame.payload) <= MAX_MESSAGE
            else:
                assert frame.length > MAX_MESSAGE
