from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.metadata.scheduler import Scheduler
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.images.local import ImagesLocal
from pycontainerd.services.images.service import ImagesService


async def _init_local(ic: InitContext[None]) -> ImagesLocal:
    return ImagesLocal(
        ic.typed(PluginType.METADATA, Metadata).db,
        ic.typed(PluginType.EVENT, Exchange),
        ic.typed(PluginType.GC, Scheduler),
    )


async def _init_grpc(ic: InitContext[None]) -> ImagesService:
    return ImagesService(ic.typed(PluginType.SERVICE, ImagesLocal, "images-service"))


LOCAL: Registration[None, ImagesLocal] = Registration(
    type=PluginType.SERVICE,
    id="images-service",
    init=_init_local,
    requires=(PluginType.METADATA, PluginType.GC, PluginType.EVENT),
)
GRPC: Registration[None, ImagesService] = Registration(
    type=PluginType.GRPC, id="images", init=_init_grpc, requires=(PluginType.SERVICE,)
)
