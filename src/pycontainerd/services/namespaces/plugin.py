from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.namespaces.local import NamespacesLocal
from pycontainerd.services.namespaces.service import NamespacesService


async def _init_local(ic: InitContext[None]) -> NamespacesLocal:
    return NamespacesLocal(
        ic.typed(PluginType.METADATA, Metadata).db, ic.typed(PluginType.EVENT, Exchange)
    )


async def _init_grpc(ic: InitContext[None]) -> NamespacesService:
    return NamespacesService(ic.typed(PluginType.SERVICE, NamespacesLocal, "namespaces-service"))


LOCAL: Registration[None, NamespacesLocal] = Registration(
    type=PluginType.SERVICE,
    id="namespaces-service",
    init=_init_local,
    requires=(PluginType.EVENT, PluginType.METADATA),
)
GRPC: Registration[None, NamespacesService] = Registration(
    type=PluginType.GRPC, id="namespaces", init=_init_grpc, requires=(PluginType.SERVICE,)
)
