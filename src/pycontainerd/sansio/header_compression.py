"""HPACK (RFC 7541) header block decoding for the HTTP/2 server, sans I/O.

The ``hpack`` package's decoder costs ~28 µs for a block of nine indexed fields, a
fifth of a whole call's budget; this one walks the block with plain integer work and
takes the static table and the Huffman code from ``hpack``. Huffman strings (a client
sends each header literally once per connection, then by index) are decoded once per
distinct string and kept in a bounded cache: every ``ctr`` is a new connection that
sends the same method paths and user agent.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_LEN = len(_STATIC)
_ENTRY_OVERHEAD = 32
_HUFFMAN_CACHE_SIZE = 1024
_huffman_cache: dict[bytes, bytes] = {}


class DecodeError(Exception):
    """The header block is malformed (a COMPRESSION_ERROR for HTTP/2)."""


def _huffman(data: bytes) -> bytes:
    value = _huffman_cache.get(data)
    if value is None:
        try:
            value = decode_huffman(data)
        except Exception as exc:
            raise DecodeError(f"bad Huffman string: {exc}") from None
        if len(_huffman_cache) >= _HUFFMAN_CACHE_SIZE:
            _huffman_cache.clear()
        _huffman_cache[data] = value
    return value


class HeaderDecoder:
    """Decodes the header blocks of one connection (they share a dynamic table)."""

    def __init__(self, max_table_size: int = 4096, max_header_list: int = 1 << 20) -> None:
        self._limit = max_table_size  # what our SETTINGS allow
        self._max_size = max_table_size  # what the encoder chose (at most the limit)
        self._size = 0
        self._dynamic: deque[tuple[bytes, bytes]] = deque()  # newest first
        self._max_header_list = max_header_list

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos, end = 0, len(block)
        list_size = 0
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                headers.append(self._entry(index))
            elif first & 0x40:  # literal, added to the dynamic table
                index, pos = _integer(block, pos, 6)
                name, value, pos = self._literal(block, pos, index)
                headers.append((name, value))
                self._add(name, value)
            elif first & 0x20:  # dynamic table size update: only before any field
                if headers:
                    raise DecodeError("dynamic table size update after a header field")
                size, pos = _integer(block, pos, 5)
                if size > self._limit:
                    raise DecodeError(f"table size {size} above the limit {self._limit}")
                self._max_size = size
                self._evict()
                continue
            else:  # literal without indexing / never indexed
                index, pos = _integer(block, pos, 4)
                name, value, pos = self._literal(block, pos, index)
                headers.append((name, value))
            name, value = headers[-1]
            list_size += len(name) + len(value) + _ENTRY_OVERHEAD
            if list_size > self._max_header_list:
                raise DecodeError("header list too large")
        return headers

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        dynamic = index - _STATIC_LEN - 1
        if index == 0 or dynamic >= len(self._dynamic):
            raise DecodeError(f"header table index {index} out of range")
        return self._dynamic[dynamic]

    def _literal(self, block: bytes, pos: int, index: int) -> tuple[bytes, bytes, int]:
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:
            self._dynamic.clear()  # an entry larger than the table empties it
            self._size = 0
            return
        self._dynamic.appendleft((name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size and self._dynamic:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise DecodeError("integer cut short")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise DecodeError("integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise DecodeError("string cut short")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    if pos + length > len(block):
        raise DecodeError("string longer than the block")
    data = block[pos : pos + length]
    pos += length
    return (_huffman(data) if huffman else data), pos
