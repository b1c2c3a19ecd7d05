"""The metadata plugin: the SQLite database every namespaced store lives in."""

from __future__ import annotations

from dataclasses import dataclass

from pycontainerd.metadata.db import DB
from pycontainerd.plugin import InitContext, PluginType, Registration


@dataclass(frozen=True, kw_only=True)
class MetadataConfig:
    pass


async def _init(ic: InitContext[MetadataConfig]) -> DB:
    ic.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = ic.root / "meta.db"
    ic.meta.exports["path"] = str(path)
    return await DB.open(path)


REGISTRATION = Registration(
    type=PluginType.METADATA, id="sqlite", init=_init, config=MetadataConfig()
)
