"""The ``io.containerd.content.v1.content`` plugin: the local blob store."""

from __future__ import annotations

from pycontainerd.content.local import LocalStore
from pycontainerd.plugin import InitContext, PluginType, Registration


async def _init(ic: InitContext[None]) -> LocalStore:
    ic.meta.exports["root"] = str(ic.root)
    return await LocalStore.open(ic.root)


REGISTRATION: Registration[None, LocalStore] = Registration(
    type=PluginType.CONTENT, id="content", init=_init
)
