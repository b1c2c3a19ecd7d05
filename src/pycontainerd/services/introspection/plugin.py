from __future__ import annotations

from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.services.introspection.local import IntrospectionLocal
from pycontainerd.services.introspection.service import IntrospectionService


async def _init_local(ic: InitContext[None]) -> IntrospectionLocal:
    # Reads the plugin set when asked, so it reports plugins initialised after it too.
    return IntrospectionLocal(ic.plugins, ic.root)


async def _init_grpc(ic: InitContext[None]) -> IntrospectionService:
    return IntrospectionService(
        ic.typed(PluginType.SERVICE, IntrospectionLocal, "introspection-service")
    )


LOCAL: Registration[None, IntrospectionLocal] = Registration(
    type=PluginType.SERVICE, id="introspection-service", init=_init_local
)
GRPC: Registration[None, IntrospectionService] = Registration(
    type=PluginType.GRPC, id="introspection", init=_init_grpc, requires=(PluginType.SERVICE,)
)
