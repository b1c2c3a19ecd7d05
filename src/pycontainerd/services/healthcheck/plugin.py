from __future__ import annotations

from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.healthcheck.service import HealthService


async def _init(ic: InitContext[None]) -> HealthService:
    return HealthService()


GRPC: Registration[None, HealthService] = Registration(
    type=PluginType.GRPC, id="healthcheck", init=_init
)
