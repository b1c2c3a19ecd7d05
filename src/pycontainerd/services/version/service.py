"""containerd.services.version.v1.Version: our version and git revision."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd import version
from pycontainerd._api.containerd.services.version.v1 import version_pb2 as pb
from pycontainerd._api.containerd.services.version.v1 import version_pb2_grpc as pb_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class VersionService(pb_grpc.VersionServicer):
    def __init__(self) -> None:
        self._response = pb.VersionResponse(version=version.VERSION, revision=version.revision())

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_VersionServicer_to_server(self, server)

    async def Version(self, request: empty_pb2.Empty, context: Ctx) -> pb.VersionResponse:
        return self._response
