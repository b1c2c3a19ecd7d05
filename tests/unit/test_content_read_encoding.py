"""The hand-encoded ReadContentResponse is the message's own serialization."""

from __future__ import annotations

import pytest

from pycontainerd._api.containerd.services.content.v1 import content_pb2 as pb
from pycontainerd.services.content.service import encode_read_response


@pytest.mark.parametrize(
    "offset", [0, 1, 127, 128, 300, 1 << 20, (1 << 30) - 1, 1 << 40, (1 << 63) - 1]
)
@pytest.mark.parametrize("data", [b"", b"x", b"y" * 127, b"z" * 128, b"w" * 32768])
def test_encoding_matches_protobuf(offset: int, data: bytes) -> None:
    want = pb.ReadContentResponse(offset=offset, data=data).SerializeToString()
    assert encode_read_response(offset, data) == want
    back = pb.ReadContentResponse.FromString(encode_read_response(offset, data))
    assert (back.offset, back.data) == (offset, data)
