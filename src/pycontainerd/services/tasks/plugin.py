"""The tasks service plugins: ``tasks-service`` (the logic) and ``tasks`` (gRPC)."""

from __future__ import annotations

from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.runtime.v2.plugin import RuntimeV2
from pycontainerd.services.tasks.local import TasksLocal
from pycontainerd.services.tasks.service import TasksService


async def _init_local(ic: InitContext[None]) -> TasksLocal:
    return TasksLocal(
        ic.typed(PluginType.METADATA, Metadata).db,
        ic.typed(PluginType.RUNTIME_V2, RuntimeV2, "task").manager,
    )


async def _init_grpc(ic: InitContext[None]) -> TasksService:
    return TasksService(ic.typed(PluginType.SERVICE, TasksLocal, "tasks-service"))


LOCAL: Registration[None, TasksLocal] = Registration(
    type=PluginType.SERVICE,
    id="tasks-service",
    init=_init_local,
    requires=(PluginType.EVENT, PluginType.RUNTIME_V2, PluginType.METADATA),
)
GRPC: Registration[None, TasksService] = Registration(
    type=PluginType.GRPC, id="tasks", init=_init_grpc, requires=(PluginType.SERVICE,)
)
