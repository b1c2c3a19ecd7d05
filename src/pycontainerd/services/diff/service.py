"""containerd.services.diff.v1.Diff over grpc.aio."""

from __future__ import annotations

from typing import Any

import grpc.aio

from pycontainerd._api.containerd.services.diff.v1 import diff_pb2 as pb
from pycontainerd._api.containerd.services.diff.v1 import diff_pb2_grpc as pb_grpc
from pycontainerd._api.containerd.types import descriptor_pb2
from pycontainerd.diff.walking import Descriptor, WalkingDiffer
from pycontainerd.services.snapshots.service import mounts_from_pb

Ctx = grpc.aio.ServicerContext[Any, Any]


def _to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations or {})
    )


class DiffService(pb_grpc.DiffServicer):
    def __init__(self, differ: WalkingDiffer) -> None:
        self._differ = differ

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_DiffServicer_to_server(self, server)

    async def Apply(self, request: pb.ApplyRequest, context: Ctx) -> pb.ApplyResponse:
        d = request.diff
        applied = await self._differ.apply(
            Descriptor(d.media_type, d.digest, d.size, dict(d.annotations)),
            mounts_from_pb(request.mounts),
        )
        return pb.ApplyResponse(applied=_to_pb(applied))

    async def Diff(self, request: pb.DiffRequest, context: Ctx) -> pb.DiffResponse:
        made = await self._differ.compare(
            mounts_from_pb(request.left),
            mounts_from_pb(request.right),
            media_type=request.media_type,
            ref=request.ref,
            labels=dict(request.labels),
        )
        return pb.DiffResponse(diff=_to_pb(made))
