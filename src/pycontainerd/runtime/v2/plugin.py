"""The ``io.containerd.runtime.v2.task`` plugin: the shim manager and the shim events
listener.

Configuration (``config.toml``)::

    [plugins."io.containerd.runtime.v2.task"]
      platforms = ["linux/amd64"]
      # How many containers without a pod group one Python shim process serves (each
      # Python shim costs about 5 MiB): 1 gives each its own shim, as containerd does,
      # so that killing a shim stops one container; 0 keeps the shim's default (8).
      containers_per_shim = 0
      # Which shim binary runs a runtime name. A name not listed here resolves as in
      # containerd: io.containerd.X.vN -> containerd-shim-X-vN, looked up beside our
      # own console scripts, then on PATH. A binary given by name is looked up the
      # same way; an absolute path is used as is.
      [plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2"]
        binary = "containerd-shim-pyrunc-v2"   # the default: our Python shim
        # Default runc options of its tasks (Go names, as in containerd's CRI config);
        # what a container's own runc options set wins (see runtime/v2/options.py).
        [plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2".options]
          BinaryName = "/usr/bin/crun"

    # e.g. to run containerd's Go shim instead:
    #   runtimes = { "io.containerd.runc.v2" = { binary = "/usr/bin/containerd-shim-runc-v2" } }

Giving ``runtimes`` replaces the default table as a whole; a runtime given without a
``binary`` keeps its default one (our shim for ``io.containerd.runc.v2``), or else
resolves by name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from pycontainerd.errdefs import InvalidArgument
from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata import containers
from pycontainerd.metadata.plugin import Metadata
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.plugin.registry import Platform
from pycontainerd.runtime.v2.events_server import EventsServer, ttrpc_address
from pycontainerd.runtime.v2.manager import CTR_SHIM_SOCKET_DIR, ShimManager, find_executable
from pycontainerd.runtime.v2.options import runc_options
from pycontainerd.shim.main import CONTAINERS_PER_SHIM_ENV

logger = logging.getLogger(__name__)

PYTHON_SHIM = "containerd-shim-pyrunc-v2"
GRPC_ADDRESS_PROPERTY = "io.containerd.plugin.grpc.address"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeBinary:
    binary: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _default_runtimes() -> dict[str, RuntimeBinary]:
    return {"io.containerd.runc.v2": RuntimeBinary(binary=PYTHON_SHIM)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeV2Config:
    platforms: list[str] = dataclasses.field(default_factory=lambda: ["linux/amd64"])
    sched_core: bool = False
    runtimes: dict[str, RuntimeBinary] = dataclasses.field(default_factory=_default_runtimes)
    containers_per_shim: int = 0


class RuntimeV2:
    """What the plugin provides: the shim manager, plus the listener it owns."""

    def __init__(self, manager: ShimManager, events_server: EventsServer) -> None:
        self.manager = manager
        self.events_server = events_server

    async def aclose(self) -> None:
        await self.manager.aclose()
        await self.events_server.aclose()


def publish_binary() -> str:
    """The program shims run to publish events: our daemon's console script."""
    found = find_executable("pycontainerd")
    return found or os.path.abspath(sys.argv[0])


async def _init(ic: InitContext[RuntimeV2Config]) -> RuntimeV2:
    for spec in ic.config.platforms:
        os_, _, arch = spec.partition("/")
        arch, _, variant = arch.partition("/")
        ic.meta.platforms.append(Platform(os_, arch, variant))
    exchange = ic.typed(PluginType.EVENT, Exchange)
    db = ic.typed(PluginType.METADATA, Metadata).db
    grpc_address = ic.properties[GRPC_ADDRESS_PROPERTY]

    async def container_runtime(ns: str, id_: str) -> str:
        found = await db.view(lambda conn: containers.get(conn, ns, id_), point=True)
        return found.runtime.name

    defaults = _default_runtimes()
    binaries: dict[str, str] = {}
    options: dict[str, any_pb2.Any] = {}
    for name, r in ic.config.runtimes.items():
        binary = r.binary or (defaults[name].binary if name in defaults else "")
        if binary:
            binaries[name] = binary
        if r.options:
            where = f'plugins."io.containerd.runtime.v2.task".runtimes."{name}".options'
            options[name] = runc_options(r.options, where)

    if ic.config.containers_per_shim < 0:
        raise InvalidArgument(
            f"containers_per_shim {ic.config.containers_per_shim}: must be 0 (the shim's "
            "default) or more"
        )
    shim_env = {}
    if ic.config.containers_per_shim:
        shim_env[CONTAINERS_PER_SHIM_ENV] = str(ic.config.containers_per_shim)

    for d in (ic.root, ic.state):
        d.mkdir(parents=True, exist_ok=True, mode=0o711)
    events_server = EventsServer(exchange, Path(ttrpc_address(grpc_address)))
    await events_server.start()
    manager = ShimManager(
        root=ic.root,
        state=ic.state,
        address=grpc_address,
        ttrpc_address=str(events_server.path),
        publish_binary=publish_binary(),
        events=exchange,
        runtimes=binaries,
        runtime_options=options,
        container_runtime=container_runtime,
        debug=logging.getLogger().isEnabledFor(logging.DEBUG),
        ctr_shim_dir=CTR_SHIM_SOCKET_DIR,
        shim_env=shim_env,
    )
    try:
        await manager.load_existing()
    except BaseException:
        await events_server.aclose()
        raise
    return RuntimeV2(manager, events_server)


REGISTRATION: Registration[RuntimeV2Config, RuntimeV2] = Registration(
    type=PluginType.RUNTIME_V2,
    id="task",
    init=_init,
    requires=(PluginType.EVENT, PluginType.METADATA),
    config=RuntimeV2Config(),
)
