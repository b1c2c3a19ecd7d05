from __future__ import annotations

from pycontainerd.metadata.plugin import Metadata
from pycontainerd.metadata.scheduler import Scheduler
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.leases.local import LeasesLocal
from pycontainerd.services.leases.service import LeasesService


async def _init_local(ic: InitContext[None]) -> LeasesLocal:
    return LeasesLocal(
        ic.typed(PluginType.METADATA, Metadata).db, ic.typed(PluginType.GC, Scheduler)
    )


async def _init_grpc(ic: InitContext[None]) -> LeasesService:
    return LeasesService(ic.typed(PluginType.SERVICE, LeasesLocal, "leases-service"))


LOCAL: Registration[None, LeasesLocal] = Registration(
    type=PluginType.SERVICE,
    id="leases-service",
    init=_init_local,
    requires=(PluginType.METADATA, PluginType.GC),
)
GRPC: Registration[None, LeasesService] = Registration(
    type=PluginType.GRPC, id="leases", init=_init_grpc, requires=(PluginType.SERVICE,)
)
