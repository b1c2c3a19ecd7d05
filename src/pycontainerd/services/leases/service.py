"""containerd.services.leases.v1.Leases over grpc.aio."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.services.leases.v1 import leases_pb2 as pb
from pycontainerd._api.containerd.services.leases.v1 import leases_pb2_grpc as pb_grpc
from pycontainerd.metadata.leases import Lease, Resource
from pycontainerd.services.leases.local import LeasesLocal
from pycontainerd.services.timestamps import to_pb

Ctx = grpc.aio.ServicerContext[Any, Any]


def lease_to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, created_at=to_pb(lease.created_at), labels=lease.labels)


class LeasesService(pb_grpc.LeasesServicer):
    def __init__(self, local: LeasesLocal) -> None:
        self._local = local

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_LeasesServicer_to_server(self, server)

    async def Create(self, request: pb.CreateRequest, context: Ctx) -> pb.CreateResponse:
        lease = await self._local.create(request.id, dict(request.labels))
        return pb.CreateResponse(lease=lease_to_pb(lease))

    async def Delete(self, request: pb.DeleteRequest, context: Ctx) -> empty_pb2.Empty:
        await self._local.delete(request.id, sync=request.sync)
        return empty_pb2.Empty()

    async def List(self, request: pb.ListRequest, context: Ctx) -> pb.ListResponse:
        found = await self._local.list(list(request.filters))
        return pb.ListResponse(leases=[lease_to_pb(x) for x in found])

    async def AddResource(self, request: pb.AddResourceRequest, context: Ctx) -> empty_pb2.Empty:
        r = request.resource
        await self._local.add_resource(request.id, Resource(r.id, r.type))
        return empty_pb2.Empty()

    async def DeleteResource(
        self, request: pb.DeleteResourceRequest, context: Ctx
    ) -> empty_pb2.Empty:
        r = request.resource
        await self._local.delete_resource(request.id, Resource(r.id, r.type))
        return empty_pb2.Empty()

    async def ListResources(
        self, request: pb.ListResourcesRequest, context: Ctx
    ) -> pb.ListResourcesResponse:
        found = await self._local.list_resources(request.id)
        return pb.ListResourcesResponse(
            resources=[pb.Resource(id=r.id, type=r.type) for r in found]
        )
