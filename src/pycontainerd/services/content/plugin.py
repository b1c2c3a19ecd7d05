from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.content.service import ContentService


async def _init(ic: InitContext[None]) -> ContentService:
    md = ic.typed(PluginType.METADATA, Metadata)
    return ContentService(md.content, ic.typed(PluginType.EVENT, Exchange))


GRPC: Registration[None, ContentService] = Registration(
    type=PluginType.GRPC,
    id="content",
    init=_init,
    requires=(PluginType.METADATA, PluginType.EVENT),
)
