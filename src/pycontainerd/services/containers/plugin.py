"""The containers service plugins: ``containers-service`` (the logic) and
``containers`` (gRPC)."""

from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.containers.local import ContainersLocal
from pycontainerd.services.containers.service import ContainersService


async def _init_local(ic: InitContext[None]) -> ContainersLocal:
    return ContainersLocal(
        ic.typed(PluginType.METADATA, Metadata).db, ic.typed(PluginType.EVENT, Exchange)
    )


async def _init_grpc(ic: InitContext[None]) -> ContainersService:
    return ContainersService(ic.typed(PluginType.SERVICE, ContainersLocal, "containers-service"))


LOCAL: Registration[None, ContainersLocal] = Registration(
    type=PluginType.SERVICE,
    id="containers-service",
    init=_init_local,
    requires=(PluginType.EVENT, PluginType.METADATA),
)
GRPC: Registration[None, ContainersService] = Registration(
    type=PluginType.GRPC, id="containers", init=_init_grpc, requires=(PluginType.SERVICE,)
)
