from __future__ import annotations

from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.snapshots.service import SnapshotsService


async def _init(ic: InitContext[None]) -> SnapshotsService:
    md = ic.typed(PluginType.METADATA, Metadata)
    return SnapshotsService(md.snapshotters, ic.typed(PluginType.EVENT, Exchange))


GRPC: Registration[None, SnapshotsService] = Registration(
    type=PluginType.GRPC,
    id="snapshots",
    init=_init,
    requires=(PluginType.METADATA, PluginType.EVENT),
)
