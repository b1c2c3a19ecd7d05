"""The daemon: initialise plugins in dependency order, serve gRPC on a unix socket.

Start-up: create root and state (0711), refuse to start if another daemon answers on
the socket and remove a stale one, initialise each enabled plugin with its decoded
config (a failing plugin is recorded and reported, unless it is required), register the
gRPC plugins and listen. Shut-down: stop taking calls, let in-flight calls finish
within a grace period, end event streams, close plugins in reverse init order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from pycontainerd import config as configmod
from pycontainerd.errdefs import ContainerdError, FailedPrecondition, InvalidArgument
from pycontainerd.errdefs_grpc import ContainerdInterceptor, wrap_handler
from pycontainerd.plugin import (
    InitContext,
    Meta,
    Plugin,
    PluginSet,
    PluginType,
    Registration,
    SkipPlugin,
    graph,
)
from pycontainerd.server.h2grpc import GrpcServer
from pycontainerd.snapshots import proxy as snapshot_proxy

logger = logging.getLogger(__name__)

# "grpcio" serves with grpc.aio's server instead of ours (h2grpc).
GRPC_SERVER_ENV = "PYCONTAINERD_GRPC_SERVER"


class _MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Every service's method handlers, served from one generic handler.

    The generated ``add_*Servicer_to_server`` functions register their methods with
    ``add_registered_method_handlers``; grpc.aio keeps one pending request per
    registered method and waits on all of them (``asyncio.wait``) for every call, which
    with the daemon's ~90 methods costs about 0.1 ms of CPU per RPC (a seventh of
    a 32 KiB content Read). One generic handler needs one pending request and one dict
    lookup. The services call ``register`` on this table as on a server.
    """

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self.generic: list[grpc.GenericRpcHandler[Any, Any]] = []

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for method, handler in method_handlers.items():
            self.methods[f"/{service_name}/{method}"] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # The generated code adds a generic handler for the same methods as well: kept
        # behind the table, it answers only what the table does not hold.
        self.generic.extend(handlers)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self.methods.get(handler_call_details.method)

    def wrapped_lookup(self) -> Callable[[str], Any]:
        """Method path to handler, each wrapped once (``wrap_handler``), for our server.
        Every service registers its methods by name (the generic handlers the generated
        code adds serve the same methods), so the table is complete."""
        wrapped = {path: wrap_handler(h) for path, h in self.methods.items()}
        return wrapped.get


class StartupError(ContainerdError):
    """The daemon cannot start (bad config, socket in use, a required plugin failed)."""

    kind = "failed to start"


def check_socket(path: Path) -> None:
    """Make ``path`` free for a new listener.

    Raises:
        FailedPrecondition: another process serves on the socket, or the path exists
        and is not a socket (we never delete a file we did not make).
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    import stat as statmod

    if not statmod.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)  # stale: its daemon is gone
            return
        raise FailedPrecondition(f"cannot probe socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise FailedPrecondition(f"another daemon is already serving on {path}")


# containerd accepts a proxy plugin's type as the short name or the plugin type string.
_SNAPSHOT_PROXY_TYPES = ("snapshot", str(PluginType.SNAPSHOT))
_CONTENT_PROXY_TYPES = ("content", str(PluginType.CONTENT))


def proxy_registrations(cfg: configmod.Config) -> list[Registration[Any, Any]]:
    """A registration for each ``[proxy_plugins.<name>]`` (containerd's LoadPlugins).

    Only snapshotters can be proxied. containerd merely warns about an unknown type and
    registers a broken plugin; refusing the config is clearer than a daemon without the
    plugin it was told to have.

    Raises:
        InvalidArgument: a type other than snapshot (content proxies included), no
            address, or a bad platform; the message names the entry.
    """
    regs: list[Registration[Any, Any]] = []
    for name, pp in cfg.proxy_plugins.items():
        if pp.type in _SNAPSHOT_PROXY_TYPES:
            regs.append(snapshot_proxy.registration(name, pp.address, pp.platform))
        elif pp.type in _CONTENT_PROXY_TYPES:
            raise InvalidArgument(
                f"config proxy_plugins.{name}: type {pp.type!r}: content proxy plugins are "
                'not supported (only type "snapshot" is)'
            )
        else:
            raise InvalidArgument(
                f"config proxy_plugins.{name}: unknown proxy plugin type {pp.type!r} "
                '(supported: "snapshot")'
            )
    return regs


class Server:
    def __init__(self, cfg: configmod.Config, registrations: list[Registration[Any, Any]]):
        self.config = cfg
        self.root = Path(cfg.root)
        self.state = Path(cfg.state)
        self.address = Path(cfg.grpc.address)
        self.plugins = PluginSet()
        self._registrations = list(registrations)  # proxy plugins are added at start
        self._proxies_added = False
        self._grpc: grpc.aio.Server | GrpcServer | None = None
        self._stopped = asyncio.Event()

    def _add_proxy_registrations(self) -> None:
        """Append the proxy plugins to the built-ins, before the graph is ordered, so
        that plugins requiring their type (metadata requires every snapshotter) get
        them.

        Raises:
            InvalidArgument: a bad proxy_plugins entry, or one whose name a built-in
                plugin of the same type already has.
        """
        if self._proxies_added:
            return
        known = {r.uri for r in self._registrations}
        for reg in proxy_registrations(self.config):
            if reg.uri in known:
                raise InvalidArgument(
                    f"config proxy_plugins.{reg.id}: plugin {reg.uri} is already registered"
                )
            self._registrations.append(reg)
            known.add(reg.uri)
        self._proxies_added = True

    def _check_plugin_config(self) -> None:
        known = {r.uri: r for r in self._registrations}
        for uri in self.config.plugins:
            if uri not in known:
                raise InvalidArgument(f'config plugins."{uri}": unknown plugin')
        for uri in self.config.required_plugins:
            if uri not in known:
                raise InvalidArgument(f"config required_plugins: unknown plugin {uri!r}")

    def _plugin_config(self, reg: Registration[Any, Any]) -> Any:
        table = self.config.plugins.get(reg.uri)
        if reg.config is None:
            if table:
                raise InvalidArgument(f'config plugins."{reg.uri}": plugin takes no config')
            return None
        if not table:
            return reg.config
        return configmod.decode(type(reg.config), table, f'plugins."{reg.uri}"')

    async def start(self) -> None:
        """Initialise plugins and start serving.

        Raises:
            StartupError / InvalidArgument / FailedPrecondition: see the module docstring.
        """
        self._add_proxy_registrations()
        self._check_plugin_config()
        for d in (self.root, self.state):
            d.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.address.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        check_socket(self.address)

        disabled = set(self.config.disabled_plugins)
        required = set(self.config.required_plugins)
        # Decode every plugin's config first so a typo stops start-up before anything runs.
        configs = {r.uri: self._plugin_config(r) for r in self._registrations}
        enabled = [r for r in self._registrations if r.uri not in disabled]
        try:
            for reg in graph(enabled):
                await self._init_plugin(reg, configs[reg.uri], required)
            await self._serve()
        except BaseException:
            await self._close_plugins()
            raise

    async def _init_plugin(self, reg: Registration[Any, Any], cfg: Any, required: set[str]) -> None:
        ic: InitContext[Any] = InitContext(
            registration=reg,
            root=self.root / reg.uri,
            state=self.state / reg.uri,
            config=cfg,
            plugins=self.plugins,
            meta=Meta(),
            properties={
                "io.containerd.plugin.root": str(self.root),
                "io.containerd.plugin.state": str(self.state),
                "io.containerd.plugin.grpc.address": str(self.address),
            },
        )
        plugin = Plugin(registration=reg, meta=ic.meta, config=cfg)
        try:
            plugin.instance = await reg.init(ic)
        except SkipPlugin as exc:
            logger.info("skip loading plugin %s: %s", reg.uri, exc)
            plugin.error = exc
        except Exception as exc:
            logger.warning("failed to load plugin %s: %s", reg.uri, exc)
            plugin.error = exc
        else:
            logger.debug("loaded plugin %s", reg.uri)
        self.plugins.add(plugin)
        if plugin.error is not None and reg.uri in required:
            raise StartupError(f"required plugin {reg.uri} failed: {plugin.error}") from (
                plugin.error
            )

    async def _serve(self) -> None:
        g = self.config.grpc
        table = _MethodTable()
        for p in self.plugins:
            if p.registration.type == PluginType.GRPC and p.error is None:
                p.instance.register(table)
        if os.environ.get(GRPC_SERVER_ENV) == "grpcio":
            server = grpc.aio.server(
                interceptors=[ContainerdInterceptor()],
                options=[
                    ("grpc.max_receive_message_length", g.max_recv_message_size),
                    ("grpc.max_send_message_length", g.max_send_message_size),
                    ("grpc.so_reuseport", 0),
                ],
            )
            server.add_generic_rpc_handlers([table, *table.generic])
            server.add_insecure_port(f"unix://{self.address}")
            await server.start()
            self._grpc = server
        else:
            ours = GrpcServer(
                table.wrapped_lookup(),
                max_recv=g.max_recv_message_size,
                max_send=g.max_send_message_size,
            )
            await ours.start(str(self.address))
            self._grpc = ours
        os.chmod(self.address, 0o660)
        if (g.uid, g.gid) != (os.getuid(), os.getgid()):
            os.chown(self.address, g.uid, g.gid)
        logger.info("serving on %s", self.address)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop serving: in-flight calls get ``grace`` seconds, then plugins close."""
        if self._grpc is not None:
            for p in self.plugins:
                shutdown = getattr(p.instance, "begin_shutdown", None)
                if shutdown is not None:
                    shutdown()
            await self._grpc.stop(grace)
            self._grpc = None
            with contextlib.suppress(FileNotFoundError):
                self.address.unlink()
        await self._close_plugins()
        self._stopped.set()
        logger.info("stopped")

    async def _close_plugins(self) -> None:
        for p in reversed(list(self.plugins)):
            close = getattr(p.instance, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:
                logger.exception("closing plugin %s", p.uri)
