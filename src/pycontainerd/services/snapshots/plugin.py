from __future__ import annotations

from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.snapshots.service import SnapshotsService


async def _init(ic: InitContext[None]) -> SnapshotsService:
    return SnapshotsService(ic.plugins.get_by_type(PluginType.SNAPSHOT))


GRPC: Registration[None, SnapshotsService] = Registration(
    type=PluginType.GRPC, id="snapshots", init=_init, requires=(PluginType.SNAPSHOT,)
)
