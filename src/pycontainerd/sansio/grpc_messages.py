"""gRPC's length-prefixed messages, sans I/O: before each message a flag byte (1:
compressed) and its length, 4 bytes big-endian."""

from __future__ import annotations

import struct
from collections.abc import Iterator

PREFIX = struct.Struct(">BI")


class MessageTooLarge(Exception):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"grpc: received message larger than max ({length} vs. {limit})")


class CompressedMessage(Exception):
    """A message flagged compressed: we offer no grpc-encoding, so none may come."""


def encode_message(data: bytes) -> bytes:
    return PREFIX.pack(0, len(data)) + data


class MessageReader:
    """Splits a stream's bytes into messages of at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet a whole message."""
        return len(self._pending)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The messages ``data`` completes, in order. Raises MessageTooLarge or
        CompressedMessage at the first bad prefix (the messages before it are given)."""
        self._pending += data
        while len(self._pending) >= PREFIX.size:
            compressed, length = PREFIX.unpack_from(self._pending)
            if length > self.limit:
                raise MessageTooLarge(length, self.limit)
            if compressed:
                raise CompressedMessage("grpc: compressed messages are not supported")
            end = PREFIX.size + length
            if len(self._pending) < end:
                return
            message = bytes(self._pending[PREFIX.size : end])
            del self._pending[:end]
            yield message
