from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.events.service import EventsService


async def _init(ic: InitContext[None]) -> EventsService:
    return EventsService(ic.typed(PluginType.EVENT, Exchange))


GRPC: Registration[None, EventsService] = Registration(
    type=PluginType.GRPC, id="events", init=_init, requires=(PluginType.EVENT,)
)
