"""containerd.services.introspection.v1.Introspection over grpc.aio."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd import errdefs_grpc
from pycontainerd._api.containerd.services.introspection.v1 import introspection_pb2 as pb
from pycontainerd._api.containerd.services.introspection.v1 import (
    introspection_pb2_grpc as pb_grpc,
)
from pycontainerd._api.containerd.types import platform_pb2
from pycontainerd._api.google.rpc import status_pb2
from pycontainerd.errdefs import NotFound
from pycontainerd.plugin import Plugin
from pycontainerd.services.introspection.local import IntrospectionLocal

Ctx = grpc.aio.ServicerContext[Any, Any]


def plugin_to_pb(p: Plugin) -> pb.Plugin:
    init_err = None
    if p.error is not None:
        code, message = errdefs_grpc.to_grpc(p.error)
        init_err = status_pb2.Status(code=code.value[0], message=message)
    return pb.Plugin(
        type=str(p.registration.type),
        id=p.registration.id,
        requires=p.registration.requires_strings(),
        platforms=[
            platform_pb2.Platform(os=pl.os, architecture=pl.architecture, variant=pl.variant)
            for pl in p.meta.platforms
        ],
        exports=p.meta.exports,
        capabilities=p.meta.capabilities,
        init_err=init_err,
    )


class IntrospectionService(pb_grpc.IntrospectionServicer):
    def __init__(self, local: IntrospectionLocal) -> None:
        self._local = local

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_IntrospectionServicer_to_server(self, server)

    async def Plugins(self, request: pb.PluginsRequest, context: Ctx) -> pb.PluginsResponse:
        found = self._local.plugins(list(request.filters))
        return pb.PluginsResponse(plugins=[plugin_to_pb(p) for p in found])

    async def Server(self, request: empty_pb2.Empty, context: Ctx) -> pb.ServerResponse:
        info = await asyncio.to_thread(self._local.server)
        return pb.ServerResponse(uuid=info.uuid, pid=info.pid, pidns=info.pidns)

    async def PluginInfo(
        self, request: pb.PluginInfoRequest, context: Ctx
    ) -> pb.PluginInfoResponse:
        for p in self._local.plugins([]):
            if str(p.registration.type) == request.type and p.registration.id == request.id:
                return pb.PluginInfoResponse(plugin=plugin_to_pb(p))
        raise NotFound(f"plugin {request.type}.{request.id}")
