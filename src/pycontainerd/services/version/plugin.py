from __future__ import annotations

from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.version.service import VersionService


async def _init(ic: InitContext[None]) -> VersionService:
    return VersionService()


GRPC: Registration[None, VersionService] = Registration(
    type=PluginType.GRPC, id="version", init=_init
)
