"""The metadata plugin (the SQLite database and the namespaced stores over the
backends) and the garbage collection scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from pycontainerd.errdefs import InvalidArgument
from pycontainerd.metadata.content import ContentStore
from pycontainerd.metadata.db import DB
from pycontainerd.metadata.gc import Collector
from pycontainerd.metadata.scheduler import Scheduler, SchedulerConfig
from pycontainerd.metadata.snapshots import NamespacedSnapshotter
from pycontainerd.plugin import InitContext, PluginType, Registration


@dataclass(frozen=True, kw_only=True)
class MetadataConfig:
    # "shared": a blob on disk in one namespace can be claimed by another without the
    # bytes being sent again; "isolated": every namespace must send every byte.
    content_sharing_policy: str = "shared"


class Metadata:
    """What the metadata plugin provides: the database and the namespaced stores."""

    def __init__(
        self, db: DB, content: ContentStore, snapshotters: dict[str, NamespacedSnapshotter]
    ) -> None:
        self.db = db
        self.content = content
        self.snapshotters = snapshotters

    async def aclose(self) -> None:
        await self.db.aclose()


async def _init(ic: InitContext[MetadataConfig]) -> Metadata:
    policy = ic.config.content_sharing_policy
    if policy not in ("shared", "isolated"):
        raise InvalidArgument(f'content_sharing_policy {policy!r}: must be "shared" or "isolated"')
    backend = ic.get(PluginType.CONTENT)
    ic.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    path = ic.root / "meta.db"
    ic.meta.exports["path"] = str(path)
    db = await DB.open(path)
    snapshotters = {
        name: NamespacedSnapshotter(db, name, sn)
        for name, sn in ic.plugins.get_by_type(PluginType.SNAPSHOT).items()
    }
    return Metadata(db, ContentStore(db, backend, shared=policy == "shared"), snapshotters)


REGISTRATION = Registration(
    type=PluginType.METADATA,
    id="sqlite",
    init=_init,
    requires=(PluginType.CONTENT, PluginType.SNAPSHOT),
    config=MetadataConfig(),
)


async def _init_scheduler(ic: InitContext[SchedulerConfig]) -> Scheduler:
    md = ic.typed(PluginType.METADATA, Metadata)
    backends = {name: sn.backend for name, sn in md.snapshotters.items()}
    scheduler = Scheduler(md.db, Collector(md.db, md.content, backends), ic.config)
    scheduler.start()
    return scheduler


SCHEDULER = Registration(
    type=PluginType.GC,
    id="scheduler",
    init=_init_scheduler,
    requires=(PluginType.METADATA,),
    config=SchedulerConfig(),
)
