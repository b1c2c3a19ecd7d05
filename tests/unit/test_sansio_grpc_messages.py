"""gRPC message framing, sans I/O: fed whole or a byte at a time, the same messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycontainerd.sansio.grpc_messages import (
    PREFIX,
    CompressedMessage,
    MessageReader,
    MessageTooLarge,
    encode_message,
)


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=64))
def test_messages_come_out_whatever_the_split(messages: list[bytes], step: int) -> None:
    stream = b"".join(encode_message(m) for m in messages)
    reader = MessageReader(limit=300)
    got = []
    for i in range(0, len(stream), step):
        got += list(reader.feed(stream[i : i + step]))
    assert got == messages and reader.buffered == 0


def test_a_partial_message_stays_buffered() -> None:
    reader = MessageReader(limit=10)
    assert list(reader.feed(encode_message(b"abc")[:-1])) == []
    assert reader.buffered == PREFIX.size + 2
    assert list(reader.feed(b"c")) == [b"abc"]


def test_too_large_and_compressed_are_refused_after_the_good_ones() -> None:
    reader = MessageReader(limit=4)
    got = []
    with pytest.raises(MessageTooLarge, match=r"larger than max \(5 vs. 4\)"):
        for message in reader.feed(encode_message(b"ok") + encode_message(b"12345")):
            got.append(message)
    assert got == [b"ok"]
    with pytest.raises(CompressedMessage):
        list(MessageReader(limit=4).feed(PREFIX.pack(1, 1) + b"x"))
