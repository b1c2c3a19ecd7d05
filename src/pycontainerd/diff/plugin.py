"""The ``io.containerd.differ.v1.walking`` plugin."""

from __future__ import annotations

from pycontainerd.diff.walking import WalkingDiffer
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.plugin.registry import Platform


async def _init(ic: InitContext[None]) -> WalkingDiffer:
    ic.meta.platforms.append(Platform("linux", "amd64"))
    return WalkingDiffer(ic.typed(PluginType.METADATA, Metadata).content, ic.root / "work")


REGISTRATION: Registration[None, WalkingDiffer] = Registration(
    type=PluginType.DIFF, id="walking", init=_init, requires=(PluginType.METADATA,)
)
