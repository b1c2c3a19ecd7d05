"""containerd.services.namespaces.v1.Namespaces over grpc.aio."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.services.namespaces.v1 import namespace_pb2 as pb
from pycontainerd._api.containerd.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from pycontainerd.metadata.namespaces import Namespace
from pycontainerd.services.namespaces.local import NamespacesLocal

Ctx = grpc.aio.ServicerContext[Any, Any]


def _to_pb(ns: Namespace) -> pb.Namespace:
    return pb.Namespace(name=ns.name, labels=ns.labels)


class NamespacesService(pb_grpc.NamespacesServicer):
    def __init__(self, local: NamespacesLocal) -> None:
        self._local = local

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_NamespacesServicer_to_server(self, server)

    async def Get(self, request: pb.GetNamespaceRequest, context: Ctx) -> pb.GetNamespaceResponse:
        return pb.GetNamespaceResponse(namespace=_to_pb(await self._local.get(request.name)))

    async def List(
        self, request: pb.ListNamespacesRequest, context: Ctx
    ) -> pb.ListNamespacesResponse:
        return pb.ListNamespacesResponse(namespaces=[_to_pb(n) for n in await self._local.list()])

    async def Create(
        self, request: pb.CreateNamespaceRequest, context: Ctx
    ) -> pb.CreateNamespaceResponse:
        ns = request.namespace
        created = await self._local.create(ns.name, dict(ns.labels))
        return pb.CreateNamespaceResponse(namespace=_to_pb(created))

    async def Update(
        self, request: pb.UpdateNamespaceRequest, context: Ctx
    ) -> pb.UpdateNamespaceResponse:
        ns = request.namespace
        updated = await self._local.update(
            ns.name, dict(ns.labels), list(request.update_mask.paths)
        )
        return pb.UpdateNamespaceResponse(namespace=_to_pb(updated))

    async def Delete(self, request: pb.DeleteNamespaceRequest, context: Ctx) -> empty_pb2.Empty:
        await self._local.delete(request.name)
        return empty_pb2.Empty()
