from __future__ import annotations

from pycontainerd.diff.walking import WalkingDiffer
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.diff.service import DiffService


async def _init(ic: InitContext[None]) -> DiffService:
    return DiffService(ic.typed(PluginType.DIFF, WalkingDiffer))


GRPC: Registration[None, DiffService] = Registration(
    type=PluginType.GRPC, id="diff", init=_init, requires=(PluginType.DIFF,)
)
