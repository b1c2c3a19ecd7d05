"""containerd.services.content.v1.Content over grpc.aio, on the namespaced store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

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

SERVICE = "containerd.services.content.v1.Content"
READ_CHUNK = 1 << 20
LIST_BLOCK = 100


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_read_response(offset: int, data: bytes) -> bytes:
    """A ReadContentResponse on the wire, byte for byte as ``SerializeToString`` makes
    it (field 1 offset, field 2 data, defaults left out), without a message object
    and its copies of the data."""
    parts: list[bytes] = []
    if offset:
        parts += (b"\x08", _varint(offset))
    if data:
        parts += (b"\x12", _varint(len(data)), data)
    return b"".join(parts)


class _HandlerTable:
    """Takes what a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same methods as the registered ones

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers.update(handlers)


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
        table = _HandlerTable()
        pb_grpc.add_ContentServicer_to_server(self, cast(Any, table))
        handlers = dict(table.handlers)
        # Read is a server stream, but served as a unary call: the wire is the same
        # (headers, messages, trailers), and a unary answer goes out in one write (one
        # batch with grpc.aio) where a stream takes one per message and one for the
        # status. Go clients (ctr content get) read in 32 KiB requests, one call each,
        # so this and the hand-encoded response are most of what a call costs us.
        handlers["Read"] = grpc.unary_unary_rpc_method_handler(
            self.Read, request_deserializer=pb.ReadContentRequest.FromString
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        cast(Any, server).add_registered_method_handlers(SERVICE, handlers)  # not in the stubs

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

    async def Read(  # type: ignore[override]  # served as unary, see register
        self, request: pb.ReadContentRequest, context: Ctx
    ) -> bytes:
        """The stream of ReadContentResponse messages, its last one returned encoded
        (see ``register``); the ones before it go out through ``context.write``.

        Unlike containerd, a read of nothing answers one message with no data.
        """
        dgst = _digest(request.digest)
        if request.offset < 0:
            raise InvalidArgument(f"read of {dgst}: offset {request.offset} is negative")
        if request.size < 0:
            raise InvalidArgument(f"read of {dgst}: size {request.size} is negative")
        info = await self._store.info(dgst)
        if request.offset > info.size:
            raise OutOfRange(f"read past object length {info.size} bytes")
        offset, size = request.offset, request.size
        if size <= 0 or offset + size > info.size:
            size = info.size - offset
        last = b""
        if size <= READ_CHUNK:
            # The common case: ctr reads through a ReaderAt in small requests (32 KiB:
            # Go's io.Copy into stdout), one call each: a cached record and one
            # backend read, no reader to open and close.
            data = await self._store.read_blob(dgst, offset, size)
            if data:
                last = encode_read_response(offset, data)
        else:
            reader = await self._store.reader_at(dgst)
            try:
                end = offset + size
                while offset < end:
                    data = await reader.read_at(offset, min(READ_CHUNK, end - offset))
                    if not data:
                        break
                    if last:
                        await context.write(last)
                    last = encode_read_response(offset, data)
                    offset += len(data)
            finally:
                await reader.aclose()
        # Nothing to read (offset at the end, an empty blob): containerd sends no message,
        # a unary call must send one, so this is one message with no data. Readers that
        # join the data (Go's ReaderAt, ours) see the same empty result.
        return last or encode_read_response(offset, b"")

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
                    data = req.data  # each access copies the bytes out of the message
                    if data:
                        await writer.write(data)
                        resp.offset += len(data)
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
