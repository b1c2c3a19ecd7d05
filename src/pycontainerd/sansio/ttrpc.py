"""ttrpc framing without I/O: encode frames, and decode them from bytes fed in any chunks.

A ttrpc connection is a sequence of frames, each a 10-byte big-endian header
(``length u32, stream id u32, type u8, flags u8``) followed by ``length`` payload bytes.
A request frame carries a serialized ``ttrpc.Request``, a response frame a
``ttrpc.Response``; data frames (ttrpc >= 1.2 streaming) carry one stream message.

Decisions, so both sides of our code agree:

- A header announcing more than ``MAX_MESSAGE`` bytes yields an ``OversizedFrame`` once
  the header is read; its payload is then skipped as it arrives, never buffered. The
  server answers it with RESOURCE_EXHAUSTED on that stream id, as ttrpc's channel does.
- Frames of an unknown type are returned as a ``Frame`` whose ``type`` is the raw int,
  not dropped here: ignoring them (for forward compatibility, as Go's server does) is the
  caller's policy. Unknown flag bits are kept in ``flags`` for the same reason.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER_SIZE = 10
MAX_MESSAGE = 4 << 20
MAX_STREAM_ID = (1 << 32) - 1

_HEADER = struct.Struct(">IIBB")


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(enum.IntFlag):
    """Frame flags; on a data frame REMOTE_CLOSED ends the sender's half of the stream."""

    REMOTE_CLOSED = 1
    REMOTE_OPEN = 2
    NO_DATA = 4


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    type: MessageType | int  # a raw int only for a type this module does not know
    flags: Flags
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose payload exceeded MAX_MESSAGE; the payload is skipped, not kept."""

    stream_id: int
    type: int
    length: int


def _message_type(value: int) -> MessageType | int:
    try:
        return MessageType(value)
    except ValueError:
        return value


def encode_header(stream_id: int, type: int, length: int, flags: int = 0) -> bytes:
    """The 10-byte header; raises ValueError on out-of-range fields."""
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"ttrpc: stream id {stream_id} out of range")
    if not 0 <= type <= 0xFF or not 0 <= flags <= 0xFF:
        raise ValueError("ttrpc: type and flags are single bytes")
    if length > MAX_MESSAGE:
        raise ValueError(f"ttrpc: message length {length} exceeds maximum of {MAX_MESSAGE}")
    return _HEADER.pack(length, stream_id, type, flags)


def encode_frame(
    stream_id: int, type: MessageType | int, payload: bytes, flags: Flags | int = 0
) -> bytes:
    """One frame, header and payload; raises ValueError if the payload exceeds MAX_MESSAGE."""
    return encode_header(stream_id, int(type), len(payload), int(flags)) + payload


class FrameDecoder:
    """Turns a byte stream into frames, whatever the chunking of ``feed`` calls.

    Buffers at most one header plus one payload of at most MAX_MESSAGE bytes.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip = 0  # payload bytes of an oversized frame still to discard

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a returned frame (0 at a frame boundary)."""
        return len(self._buffer) + self._skip

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        """Adds ``data`` and returns every frame it completes, in order."""
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        self._buffer += data
        frames: list[Frame | OversizedFrame] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= HEADER_SIZE:
            length, stream_id, type_, flags = _HEADER.unpack_from(buffer, offset)
            if length > MAX_MESSAGE:
                frames.append(OversizedFrame(stream_id, type_, length))
                offset += HEADER_SIZE
                skipped = min(length, len(buffer) - offset)
                offset += skipped
                self._skip = length - skipped
                continue
            end = offset + HEADER_SIZE + length
            if end > len(buffer):
                break
            payload = bytes(buffer[offset + HEADER_SIZE : end])
            frames.append(Frame(stream_id, _message_type(type_), Flags(flags), payload))
            offset = end
        del buffer[:offset]
        return frames


class StreamIds:
    """Client stream ids: odd, increasing from 1, never reused on a connection."""

    def __init__(self) -> None:
        self._next = 1

    def allocate(self) -> int:
        """The next id; raises OverflowError when the 32-bit space is used up."""
        stream_id = self._next
        if stream_id > MAX_STREAM_ID:
            raise OverflowError("ttrpc: stream ids exhausted")
        self._next += 2
        return stream_id
