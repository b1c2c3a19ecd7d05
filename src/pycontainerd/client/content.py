"""The content store over gRPC: blobs addressed by digest, and resumable ingests.

``client.content`` works against any containerd-compatible daemon. Reads are async
iterators of chunks; writes go through a ``ContentWriter`` bound to an ingest ``ref``,
which resumes where a previous writer with the same ref stopped.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2

from pycontainerd.client.aio import AsyncAPI
from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import AlreadyExists, FailedPrecondition, Unavailable
from pycontainerd.errdefs_grpc import from_grpc

from pycontainerd._api.containerd.services.content.v1 import (  # isort: skip
    content_pb2 as pb,
    content_pb2_grpc as pb_grpc,
)

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

# The chunk size the writer sends; well under gRPC's message limit.
WRITE_CHUNK = 1 << 20
# How long ``open`` retries a ref that another writer has locked.
LOCKED_RETRY_SECONDS = 10.0


def _ts(ts: Any) -> datetime.datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=datetime.UTC)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ContentInfo:
    digest: str
    size: int
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_proto(cls, info: pb.Info) -> ContentInfo:
        return cls(
            info.digest, info.size, dict(info.labels), _ts(info.created_at), _ts(info.updated_at)
        )


@dataclass(frozen=True, slots=True)
class IngestStatus:
    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    @classmethod
    def from_proto(cls, st: pb.Status) -> IngestStatus:
        return cls(st.ref, st.offset, st.total, st.expected, _ts(st.started_at), _ts(st.updated_at))


class ContentWriter:
    """One ingest, written over a ``Write`` stream. Use ``async with``.

    ``offset`` is where the next ``write`` lands: non-zero when the ingest was resumed.
    Leaving the block without ``commit`` keeps the ingest for a later writer to resume
    (``ContentAPI.abort`` drops it).
    """

    def __init__(self, client: AsyncClient, ref: str, total: int = 0, expected: str = "") -> None:
        self._client = client
        self.ref = ref
        self.total = total
        self.expected = expected
        self.offset = 0
        self.digest = ""
        self._call: Any = None

    async def __aenter__(self) -> ContentWriter:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Start the stream and learn the ingest's offset (resume point).

        A ref still locked by a writer that is going away is retried with back-off for
        about ten seconds, as containerd's ``content.OpenWriter`` does.

        Raises:
            Unavailable: another writer still holds the ref after the retries.
            AlreadyExists: ``expected`` is already in the store.
        """
        stub: Any = pb_grpc.ContentStub(self._client.channel)
        delay = 0.01
        deadline = asyncio.get_running_loop().time() + LOCKED_RETRY_SECONDS
        while True:
            self._call = stub.Write(metadata=self._client.metadata())
            try:
                resp = await self._exchange(
                    pb.WriteContentRequest(
                        action=pb.STAT, ref=self.ref, total=self.total, expected=self.expected
                    )
                )
                break
            except Unavailable:
                await self.close()
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except BaseException:
                await self.close()
                raise
        self.offset = resp.offset
        if resp.total:
            self.total = resp.total

    async def _exchange(self, req: pb.WriteContentRequest) -> pb.WriteContentResponse:
        try:
            await self._call.write(req)
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
            # The server ended the stream: its status carries the reason.
            try:
                await self._call.wait_for_connection()
                code = await self._call.code()
                details = await self._call.details()
            except grpc.aio.AioRpcError as exc:
                raise from_grpc(exc) from None
            raise FailedPrecondition(f"content write {self.ref}: stream closed: {code} {details}")
        return resp  # type: ignore[no-any-return]

    async def write(self, data: bytes) -> None:
        """Append ``data`` at ``offset``."""
        for start in range(0, len(data), WRITE_CHUNK):
            chunk = data[start : start + WRITE_CHUNK]
            resp = await self._exchange(
                pb.WriteContentRequest(
                    action=pb.WRITE, ref=self.ref, offset=self.offset, data=chunk
                )
            )
            self.offset = resp.offset

    async def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        """Commit the ingest as a blob; returns its digest.

        Raises:
            FailedPrecondition: size or digest differ from what was written.
            AlreadyExists: the blob is already in the store (the ingest is dropped).
        """
        resp = await self._exchange(
            pb.WriteContentRequest(
                action=pb.COMMIT,
                ref=self.ref,
                offset=self.offset,
                total=size or self.total,
                expected=expected or self.expected,
                labels=dict(labels or {}),
            )
        )
        self.digest = resp.digest
        return resp.digest

    async def close(self) -> None:
        if self._call is not None:
            call, self._call = self._call, None
            # Half-close and let the server finish the stream: it releases the ref's lock
            # as it returns, so a writer opened next on the same ref finds it free.
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await call.done_writing()
                async with asyncio.timeout(5):
                    while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                        pass
            call.cancel()


class ContentAPI(AsyncAPI):
    """``client.content``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def _stub(self) -> pb_grpc.ContentAsyncStub:
        return pb_grpc.ContentStub(self._client.channel)

    async def info(self, digest: str) -> ContentInfo:
        """Raises NotFound, or InvalidArgument for a malformed digest."""
        resp = await self._client.call(self._stub.Info, pb.InfoRequest(digest=digest))
        return ContentInfo.from_proto(resp.info)

    async def list(self, filters: Sequence[str] = ()) -> list[ContentInfo]:
        """All blobs matching any filter. Raises InvalidArgument for a bad filter."""
        out: list[ContentInfo] = []
        req = pb.ListContentRequest(filters=list(filters))
        async for resp in self._client.stream(self._stub.List, req):
            out.extend(ContentInfo.from_proto(i) for i in resp.info)
        return out

    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> ContentInfo:
        """Set (or, with an empty value, remove) labels. Raises NotFound."""
        req = pb.UpdateRequest(
            info=pb.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        return ContentInfo.from_proto((await self._client.call(self._stub.Update, req)).info)

    async def delete(self, digest: str) -> None:
        """Raises NotFound."""
        await self._client.call(self._stub.Delete, pb.DeleteContentRequest(digest=digest))

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` (``size`` 0: to the end), in chunks.

        Raises NotFound, or OutOfRange for an offset past the end.
        """
        req = pb.ReadContentRequest(digest=digest, offset=offset, size=size)
        async for resp in self._client.stream(self._stub.Read, req):
            yield resp.data

    async def read_all(self, digest: str) -> bytes:
        """The whole blob. Raises NotFound."""
        return b"".join([chunk async for chunk in self.read(digest)])

    async def status(self, ref: str) -> IngestStatus:
        """Raises NotFound for an unknown ingest."""
        resp = await self._client.call(self._stub.Status, pb.StatusRequest(ref=ref))
        return IngestStatus.from_proto(resp.status)

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[IngestStatus]:
        req = pb.ListStatusesRequest(filters=list(filters))
        resp = await self._client.call(self._stub.ListStatuses, req)
        return [IngestStatus.from_proto(s) for s in resp.statuses]

    async def abort(self, ref: str) -> None:
        """Drop an ingest. Raises NotFound."""
        await self._client.call(self._stub.Abort, pb.AbortRequest(ref=ref))

    def writer(self, ref: str, total: int = 0, expected: str = "") -> ContentWriter:
        """A writer for ingest ``ref`` (use ``async with``); see ``ContentWriter``."""
        return ContentWriter(self._client, ref, total, expected)

    async def write_blob(
        self,
        ref: str,
        data: bytes | Iterable[bytes] | AsyncIterable[bytes],
        *,
        size: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """Write a whole blob (resuming an ingest of the same ref) and commit it.

        A blob already in the store is success, as in containerd's ``content.WriteBlob``
        (its labels are then set with ``update_labels``).

        Returns:
            A descriptor (without media type) of the committed blob.
        Raises:
            FailedPrecondition: the bytes do not match ``size``/``expected``.
        """
        if isinstance(data, bytes):
            size = size or len(data)
            expected = expected or "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            async with self.writer(ref, size, expected) as w:
                skip = w.offset
                if isinstance(data, bytes):
                    await w.write(data[skip:])
                else:
                    await _write_stream(w, data, skip)
                digest = await w.commit(size, expected, labels)
                return Descriptor("", digest, w.offset)
        except AlreadyExists:
            if not expected:
                raise
            if labels:
                await self.update_labels(expected, labels)
            info = await self.info(expected)
            return Descriptor("", info.digest, info.size)


async def _write_stream(
    w: ContentWriter, data: Iterable[bytes] | AsyncIterable[bytes], skip: int
) -> None:
    """Write chunks of a stream, skipping the first ``skip`` bytes already ingested."""

    async def chunks() -> AsyncIterator[bytes]:
        if isinstance(data, AsyncIterable):
            async for c in data:
                yield c
        else:
            for c in data:
                yield c

    async for chunk in chunks():
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        await w.write(chunk[skip:])
        skip = 0
