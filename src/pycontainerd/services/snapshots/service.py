"""containerd.services.snapshots.v1.Snapshots over grpc.aio.

Every call names its snapshotter; one that is not loaded is NOT_FOUND
(``snapshotter not loaded: <name>``), which is what clients such as ``ctr images
check`` expect when asking whether an image is unpacked. The snapshotters themselves
register as ``io.containerd.snapshotter.v1`` plugins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from pycontainerd.errdefs import NotFound

Ctx = grpc.aio.ServicerContext[Any, Any]


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(self, snapshotters: Mapping[str, object]) -> None:
        self._snapshotters = dict(snapshotters)

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    def _get(self, name: str) -> object:
        try:
            return self._snapshotters[name]
        except KeyError:
            raise NotFound(f"snapshotter not loaded: {name}") from None

    async def Prepare(self, request: pb.PrepareSnapshotRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def View(self, request: pb.ViewSnapshotRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def Mounts(self, request: pb.MountsRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def Commit(self, request: pb.CommitSnapshotRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def Remove(self, request: pb.RemoveSnapshotRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def Stat(self, request: pb.StatSnapshotRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def Update(self, request: pb.UpdateSnapshotRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def List(
        self, request: pb.ListSnapshotsRequest, context: Ctx
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        self._get(request.snapshotter)
        for _ in ():  # no snapshotter can be found yet, so nothing is ever listed
            yield pb.ListSnapshotsResponse()

    async def Usage(self, request: pb.UsageRequest, context: Ctx) -> Any:
        self._get(request.snapshotter)

    async def Cleanup(self, request: pb.CleanupRequest, context: Ctx) -> empty_pb2.Empty:
        self._get(request.snapshotter)
        return empty_pb2.Empty()
