"""The pull joins the registry's small body pieces into large content Write messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from pycontainerd.client import pull as pull_module
from pycontainerd.client.types import Descriptor


class RecordingWriter:
    """Stands in for ``ContentWriter``: records each ``write``'s size."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.writes: list[int] = []
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.data += data
        self.offset += len(data)


# All the puller reads of its session before fetching (``fetch`` is replaced).
SESSION: Any = SimpleNamespace(ref=SimpleNamespace(domain="registry.test", path="repo"))


def _body(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, pull_module.WRITE_BATCH, 3_500_000])
async def test_pieces_are_joined_into_batches(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _body(size)
    offsets: list[int] = []

    async def fake_fetch(session: Any, desc: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        offsets.append(offset)
        for start in range(offset, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    monkeypatch.setattr(pull_module, "fetch", fake_fetch)
    reports: list[tuple[str, int]] = []
    puller = pull_module._Puller(
        object(),  # type: ignore[arg-type]
        SESSION,
        None,
        lambda ref, status, offset, total: reports.append((status, offset)),
    )
    w = RecordingWriter()
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "0" * 64, size)
    await puller._stream_to(w, desc)  # type: ignore[arg-type]
    assert w.data == body
    assert offsets == [0]
    # Every message but the last is a full batch; the last holds the rest.
    assert all(n >= pull_module.WRITE_BATCH for n in w.writes[:-1])
    assert len(w.writes) == -(-size // pull_module.WRITE_BATCH)
    assert reports == [("downloading", end) for end in _running_totals(w.writes)]


async def test_a_resumed_ingest_is_fetched_from_its_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    body = _body(2_000_000)
    seen: list[int] = []

    async def fake_fetch(session: Any, desc: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        seen.append(offset)
        yield body[offset:]

    monkeypatch.setattr(pull_module, "fetch", fake_fetch)
    puller = pull_module._Puller(object(), SESSION, None, None)  # type: ignore[arg-type]
    w = RecordingWriter(offset=1_500_000)
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar", "sha256:" + "0" * 64, len(body))
    await puller._stream_to(w, desc)  # type: ignore[arg-type]
    assert seen == [1_500_000]
    assert w.data == body[1_500_000:]
    assert w.offset == len(body)


def _running_totals(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for n in sizes:
        total += n
        out.append(total)
    return out
