"""containerd.services.content.v1.Content over grpc.aio, on the namespaced store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd import digests, identifiers
from pycontainerd._api.containerd.events import content_pb2 as events_pb
from pycontainerd._api.containerd.services.content.v1 import content_pb2 as pb
from pycontainerd._api.containerd.services.content.v1 import content_pb2_grpc as pb_grpc
from pycontainerd.content.interface import Info, Status
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound, OutOfRange
from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.content import ContentStore
from pycontainerd.services.timestamps import to_pb

Ctx = grpc.aio.ServicerContext[Any, Any]

READ_CHUNK = 1 << 20
LIST_BLOCK = 100


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        digest=info.digest,
        size=info.size,
        created_at=to_pb(info.created_at),
        updated_at=to_pb(info.updated_at),
        labels=dict(info.labels),
    )


def status_to_pb(st: Status) -> pb.Status:
    return pb.Status(
        started_at=to_pb(st.started_at),
        updated_at=to_pb(st.updated_at),
        ref=st.ref,
        offset=st.offset,
        total=st.total,
        expected=st.expected,
    )


def _digest(dgst: str) -> str:
    try:
        return digests.validate(dgst)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"{identifiers.go_quote(dgst)} failed validation: {exc.message}"
        ) from exc


class ContentService(pb_grpc.ContentServicer):
    def __init__(self, store: ContentStore, exchange: Exchange) -> None:
        self._store = store
        self._events = exchange

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ContentServicer_to_server(self, server)

    async def Info(self, request: pb.InfoRequest, context: Ctx) -> pb.InfoResponse:
        return pb.InfoResponse(info=info_to_pb(await self._store.info(_digest(request.digest))))

    async def Update(self, request: pb.UpdateRequest, context: Ctx) -> pb.UpdateResponse:
        i = request.info
        updated = await self._store.update(
            Info(_digest(i.digest), i.size, labels=dict(i.labels)), list(request.update_mask.paths)
        )
        return pb.UpdateResponse(info=info_to_pb(updated))

    async def List(
        self, request: pb.ListContentRequest, context: Ctx
    ) -> AsyncIterator[pb.ListContentResponse]:
        block: list[pb.Info] = []
        async for info in self._store.walk(list(request.filters)):
            block.append(info_to_pb(info))
            if len(block) >= LIST_BLOCK:
                yield pb.ListContentResponse(info=block)
                block = []
        if block:
            yield pb.ListContentResponse(info=block)

    async def Delete(self, request: pb.DeleteContentRequest, context: Ctx) -> empty_pb2.Empty:
        dgst = _digest(request.digest)
        await self._store.delete(dgst)
        self._store.db.deleted()
        await self._events.publish("/content/delete", events_pb.ContentDelete(digest=dgst))
        return empty_pb2.Empty()

    async def Read(
        self, request: pb.ReadContentRequest, context: Ctx
    ) -> AsyncIterator[pb.ReadContentResponse]:
        dgst = _digest(request.digest)
        if request.offset < 0:
            raise InvalidArgument(f"read of {dgst}: offset {request.offset} is negative")
        if request.size < 0:
            raise InvalidArgument(f"read of {dgst}: size {request.size} is negative")
        info = await self._store.info(dgst)
        if request.offset > info.size:
            raise OutOfRange(f"read past object length {info.size} bytes")
        size = request.size
        if size <= 0 or request.offset + size > info.size:
            size = info.size - request.offset
        if size <= READ_CHUNK:
            # The common case: ctr reads through a ReaderAt in small requests (32 KiB:
            # Go's io.Copy into stdout), one RPC each, so the per-request cost is what
            # counts: a cached record and one backend read, no reader to open and close.
            data = await self._store.read_blob(dgst, request.offset, size)
            if data:
                yield pb.ReadContentResponse(offset=request.offset, data=data)
            return
        reader = await self._store.reader_at(dgst)
        try:
            offset, end = request.offset, request.offset + size
            while offset < end:
                data = await reader.read_at(offset, min(READ_CHUNK, end - offset))
                if not data:
                    break
                yield pb.ReadContentResponse(offset=offset, data=data)
                offset += len(data)
        finally:
            await reader.aclose()

    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        try:
            st = await self._store.status(request.ref)
        except NotFound as exc:
            raise NotFound(
                f"could not get status for ref {identifiers.go_quote(request.ref)}: {exc.message}"
            ) from exc
        return pb.StatusResponse(status=status_to_pb(st))

    async def ListStatuses(
        self, request: pb.ListStatusesRequest, context: Ctx
    ) -> pb.ListStatusesResponse:
        statuses = await self._store.list_statuses(list(request.filters))
        return pb.ListStatusesResponse(statuses=[status_to_pb(s) for s in statuses])

    async def Abort(self, request: pb.AbortRequest, context: Ctx) -> empty_pb2.Empty:
        await self._store.abort(request.ref)
        return empty_pb2.Empty()

    async def Write(
        self, request_iterator: AsyncIterator[pb.WriteContentRequest], context: Ctx
    ) -> AsyncIterator[pb.WriteContentResponse]:
        """The ingest protocol: the first message names the ref (and total/expected);
        each message is answered with the writer's offset; COMMIT ends the stream."""
        requests = aiter(request_iterator)
        try:
            req = await anext(requests)
        except StopAsyncIteration:
            return
        if not req.ref:
            raise InvalidArgument("first message must have a reference")
        ref = req.ref  # Go clients name it in the first message only
        total, expected = req.total, req.expected
        if expected:
            _digest(expected)
        writer = await self._store.writer(req.ref, total, expected)
        try:
            while True:
                st = await writer.status()
                resp = pb.WriteContentResponse(action=req.action, offset=st.offset)
                if req.expected:
                    expected = _digest(req.expected)
                    try:
                        await self._store.info(expected)
                    except NotFound:
                        pass
                    else:
                        await writer.close()
                        await self._store.abort(ref)
                        raise AlreadyExists(f"blob with expected digest {expected} exists")
                if req.total > 0:
                    total = req.total
                if req.action == pb.STAT:
                    resp.digest = writer.digest()
                    resp.started_at.CopyFrom(to_pb(st.started_at))
                    resp.updated_at.CopyFrom(to_pb(st.updated_at))
                    resp.total = total
                elif req.action in (pb.WRITE, pb.COMMIT):
                    if req.offset > 0 and req.offset != st.offset:
                        raise OutOfRange(
                            f"write @{req.offset} must occur at current offset {st.offset}"
                        )
                    if req.offset == 0 and st.offset > 0:
                        await writer.truncate(0)
                        resp.offset = 0
                    if req.data:
                        await writer.write(req.data)
                        resp.offset += len(req.data)
                    if req.action == pb.COMMIT:
                        await writer.commit(total, expected, dict(req.labels))
                        committed = writer.digest()
                        await self._events.publish(
                            "/content/create",
                            events_pb.ContentCreate(digest=committed, size=resp.offset),
                        )
                    resp.digest = writer.digest()
                else:
                    raise InvalidArgument(f"unknown write action {req.action}")
                yield resp
                if req.action == pb.COMMIT:
                    return
                try:
                    req = await anext(requests)
                except StopAsyncIteration:
                    return
        finally:
            await writer.close()
