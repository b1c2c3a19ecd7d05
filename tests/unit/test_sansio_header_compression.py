"""Our HPACK decoder against the ``hpack`` package's encoder, and against garbage."""

from __future__ import annotations

import contextlib

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycontainerd.sansio.header_compression import DecodeError, HeaderDecoder

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
_value = st.binary(max_size=60)
_headers = st.lists(st.tuples(_token, _value), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(_headers, min_size=1, max_size=6), st.integers(min_value=0, max_value=4096))
def test_decodes_what_hpack_encodes(blocks: list[list[tuple[str, bytes]]], table: int) -> None:
    """A connection's blocks share the dynamic table: sizes, evictions, Huffman strings
    and indexed fields all come out as they went in."""
    encoder = hpack.Encoder()
    encoder.header_table_size = table
    decoder = HeaderDecoder()
    for headers in blocks:
        encoded = encoder.encode([(name.encode(), value) for name, value in headers])
        assert decoder.decode(encoded) == [(name.encode(), value) for name, value in headers]


def test_never_indexed_and_static_fields() -> None:
    encoder = hpack.Encoder()
    block = encoder.encode([(":method", "POST"), hpack.NeverIndexedHeaderTuple("secret", "x")])
    assert HeaderDecoder().decode(block) == [(b":method", b"POST"), (b"secret", b"x")]


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x80\x80\x80\x80\x80\x01",  # an integer that never ends small
        b"\xbf",  # dynamic index 62 with an empty table
        b"\x40\x05ab",  # a name longer than the block
        b"\x3f\xe2\x1f",  # a table size above the limit (4097)
        b"\x00\x81\xff\x01a",  # a Huffman name that is only padding bits
    ],
)
def test_malformed_blocks_are_decode_errors(block: bytes) -> None:
    with pytest.raises(DecodeError):
        HeaderDecoder().decode(block)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_decode_error(block: bytes) -> None:
    with contextlib.suppress(DecodeError):
        HeaderDecoder().decode(block)


def test_header_list_limit() -> None:
    block = hpack.Encoder().encode([("big", "x" * 2000)])
    with pytest.raises(DecodeError):
        HeaderDecoder(max_header_list=1000).decode(block)
