"""The event exchange plugin."""

from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.plugin import InitContext, PluginType, Registration


async def _init(ic: InitContext[None]) -> Exchange:
    return Exchange()


REGISTRATION: Registration[None, Exchange] = Registration(
    type=PluginType.EVENT, id="exchange", init=_init
)
