"""containerd.services.snapshots.v1.Snapshots over grpc.aio, on the namespaced
snapshotters.

Every call names its snapshotter; one that is not loaded is NOT_FOUND
(``snapshotter not loaded: <name>``), as containerd answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.events import snapshot_pb2 as events_pb
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from pycontainerd._api.containerd.types import mount_pb2
from pycontainerd.errdefs import NotFound
from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.snapshots import NamespacedSnapshotter
from pycontainerd.services.timestamps import to_pb
from pycontainerd.snapshots.interface import Info, Kind, Mount

Ctx = grpc.aio.ServicerContext[Any, Any]
LIST_BLOCK = 100


def mounts_to_pb(mounts: Sequence[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def mounts_from_pb(mounts: Sequence[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts]


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=pb.Kind.Value(info.kind.name),
        created_at=to_pb(info.created_at),
        updated_at=to_pb(info.updated_at),
        labels=dict(info.labels),
    )


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(
        self, snapshotters: Mapping[str, NamespacedSnapshotter], exchange: Exchange
    ) -> None:
        self._snapshotters = dict(snapshotters)
        self._events = exchange

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    def _get(self, name: str) -> NamespacedSnapshotter:
        try:
            return self._snapshotters[name]
        except KeyError:
            raise NotFound(f"snapshotter not loaded: {name}") from None

    async def Prepare(
        self, request: pb.PrepareSnapshotRequest, context: Ctx
    ) -> pb.PrepareSnapshotResponse:
        sn = self._get(request.snapshotter)
        mounts = await sn.prepare(request.key, request.parent, dict(request.labels))
        await self._events.publish(
            "/snapshot/prepare",
            events_pb.SnapshotPrepare(
                key=request.key, parent=request.parent, snapshotter=request.snapshotter
            ),
        )
        return pb.PrepareSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def View(self, request: pb.ViewSnapshotRequest, context: Ctx) -> pb.ViewSnapshotResponse:
        sn = self._get(request.snapshotter)
        mounts = await sn.view(request.key, request.parent, dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def Mounts(self, request: pb.MountsRequest, context: Ctx) -> pb.MountsResponse:
        mounts = await self._get(request.snapshotter).mounts(request.key)
        return pb.MountsResponse(mounts=mounts_to_pb(mounts))

    async def Commit(self, request: pb.CommitSnapshotRequest, context: Ctx) -> empty_pb2.Empty:
        sn = self._get(request.snapshotter)
        await sn.commit(request.name, request.key, dict(request.labels))
        await self._events.publish(
            "/snapshot/commit",
            events_pb.SnapshotCommit(
                key=request.key, name=request.name, snapshotter=request.snapshotter
            ),
        )
        return empty_pb2.Empty()

    async def Remove(self, request: pb.RemoveSnapshotRequest, context: Ctx) -> empty_pb2.Empty:
        await self._get(request.snapshotter).remove(request.key)
        await self._events.publish(
            "/snapshot/remove",
            events_pb.SnapshotRemove(key=request.key, snapshotter=request.snapshotter),
        )
        return empty_pb2.Empty()

    async def Stat(self, request: pb.StatSnapshotRequest, context: Ctx) -> pb.StatSnapshotResponse:
        info = await self._get(request.snapshotter).stat(request.key)
        return pb.StatSnapshotResponse(info=info_to_pb(info))

    async def Update(
        self, request: pb.UpdateSnapshotRequest, context: Ctx
    ) -> pb.UpdateSnapshotResponse:
        i = request.info
        info = Info(Kind(i.kind), i.name, i.parent, dict(i.labels))
        updated = await self._get(request.snapshotter).update(info, list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_to_pb(updated))

    async def List(
        self, request: pb.ListSnapshotsRequest, context: Ctx
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        block: list[pb.Info] = []
        async for info in self._get(request.snapshotter).walk(list(request.filters)):
            block.append(info_to_pb(info))
            if len(block) >= LIST_BLOCK:
                yield pb.ListSnapshotsResponse(info=block)
                block = []
        if block:
            yield pb.ListSnapshotsResponse(info=block)

    async def Usage(self, request: pb.UsageRequest, context: Ctx) -> pb.UsageResponse:
        usage = await self._get(request.snapshotter).usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(self, request: pb.CleanupRequest, context: Ctx) -> empty_pb2.Empty:
        await self._get(request.snapshotter).cleanup()
        return empty_pb2.Empty()
