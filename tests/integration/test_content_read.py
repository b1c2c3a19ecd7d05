"""Content Read as the wire shows it: served as a unary call (see ContentService.register),
it must still be containerd's stream of ReadContentResponse messages, 1 MiB each."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from pycontainerd import harness
from pycontainerd._api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from tests.integration.test_content import md, write_blob

MiB = 1 << 20


@pytest.fixture
def stub(daemon: harness.Daemon) -> Iterator[content_pb2_grpc.ContentStub]:
    with grpc.insecure_channel(f"unix://{daemon.address}") as ch:
        yield content_pb2_grpc.ContentStub(ch)


def _read(
    stub: content_pb2_grpc.ContentStub,
    dgst: str,
    offset: int = 0,
    size: int = 0,
    ns: str = "default",
) -> list[content_pb2.ReadContentResponse]:
    req = content_pb2.ReadContentRequest(digest=dgst, offset=offset, size=size)
    return list(stub.Read(req, metadata=md(ns), timeout=30))


def test_read_streams_1mib_messages(
    daemon: harness.Daemon, stub: content_pb2_grpc.ContentStub
) -> None:
    data = os.urandom(2 * MiB + 12345)
    with grpc.insecure_channel(f"unix://{daemon.address}") as ch:
        dgst = write_blob(ch, data, ref="big")
    whole = _read(stub, dgst)
    assert [m.offset for m in whole] == [0, MiB, 2 * MiB]
    assert b"".join(m.data for m in whole) == data
    part = _read(stub, dgst, offset=100, size=MiB + 1)
    assert [(m.offset, len(m.data)) for m in part] == [(100, MiB), (100 + MiB, 1)]
    assert b"".join(m.data for m in part) == data[100 : 101 + MiB]
    # size past the end is cut at the end; a small read is one message
    tail = _read(stub, dgst, offset=len(data) - 5, size=100)
    assert [(m.offset, m.data) for m in tail] == [(len(data) - 5, data[-5:])]
    one = _read(stub, dgst, offset=0, size=1)
    assert [(m.offset, m.data) for m in one] == [(0, data[:1])]


def test_read_of_nothing_is_one_empty_message(
    daemon: harness.Daemon, stub: content_pb2_grpc.ContentStub
) -> None:
    with grpc.insecure_channel(f"unix://{daemon.address}") as ch:
        dgst = write_blob(ch, b"0123456789", ref="small")
        empty = write_blob(ch, b"", ref="empty")
    # containerd sends no message; a unary call has to send one, so it has no data
    for got, offset in [
        (_read(stub, dgst, offset=10), 10),
        (_read(stub, dgst, offset=10, size=5), 10),
        (_read(stub, empty), 0),
    ]:
        assert [(m.offset, m.data) for m in got] == [(offset, b"")]


def test_read_errors_keep_their_codes(
    daemon: harness.Daemon, stub: content_pb2_grpc.ContentStub
) -> None:
    with grpc.insecure_channel(f"unix://{daemon.address}") as ch:
        dgst = write_blob(ch, b"0123456789", ref="small")
    for kwargs, code in [
        ({"offset": 11}, grpc.StatusCode.OUT_OF_RANGE),
        ({"size": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"ns": "other"}, grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            _read(stub, dgst, **kwargs)  # type: ignore[arg-type]
        assert info.value.code() == code, kwargs
        assert info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.Read(content_pb2.ReadContentRequest(digest="sha256:zz"), metadata=md(), timeout=10)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Read(content_pb2.ReadContentRequest(digest=dgst), timeout=10))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_cancelled_read_leaves_the_daemon_serving(
    daemon: harness.Daemon, stub: content_pb2_grpc.ContentStub
) -> None:
    data = os.urandom(4 * MiB)
    with grpc.insecure_channel(f"unix://{daemon.address}") as ch:
        dgst = write_blob(ch, data, ref="big")
    call = stub.Read(content_pb2.ReadContentRequest(digest=dgst), metadata=md(), timeout=30)
    first = next(call)
    assert first.data == data[:MiB]
    call.cancel()
    assert b"".join(m.data for m in _read(stub, dgst)) == data
