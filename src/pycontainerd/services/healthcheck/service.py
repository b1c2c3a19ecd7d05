"""grpc.health.v1.Health: SERVING while the daemon serves, NOT_SERVING once it stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from pycontainerd._api.grpc.health.v1 import health_pb2 as pb
from pycontainerd._api.grpc.health.v1 import health_pb2_grpc as pb_grpc
from pycontainerd.errdefs import NotFound

Ctx = grpc.aio.ServicerContext[Any, Any]


class HealthService(pb_grpc.HealthServicer):
    def __init__(self) -> None:
        self._serving = True
        self._changed = asyncio.Event()
        self.services: set[str] = {""}

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_HealthServicer_to_server(self, server)

    def begin_shutdown(self) -> None:
        self._serving = False
        self._changed.set()

    def _status(self, service: str) -> pb.HealthCheckResponse.ServingStatus.ValueType:
        if service not in self.services:
            return pb.HealthCheckResponse.SERVICE_UNKNOWN
        return (
            pb.HealthCheckResponse.SERVING if self._serving else pb.HealthCheckResponse.NOT_SERVING
        )

    async def Check(self, request: pb.HealthCheckRequest, context: Ctx) -> pb.HealthCheckResponse:
        if request.service not in self.services:
            raise NotFound(f"unknown service {request.service!r}")
        return pb.HealthCheckResponse(status=self._status(request.service))

    async def Watch(
        self, request: pb.HealthCheckRequest, context: Ctx
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield pb.HealthCheckResponse(status=status)
                last = status
            if not self._serving:
                return
            await self._changed.wait()
