"""Plugin registrations, their dependency order, and the set of initialised plugins.

A plugin is a ``Registration`` (type, id, what it requires, a config dataclass of
defaults, an async init function). The server orders registrations with ``graph`` the
way containerd does (each plugin after every plugin of the types it requires, otherwise
in registration order), initialises them one by one, and records each result (an
instance, or the error that stopped it) in a ``PluginSet``. ``SkipPlugin`` marks a plugin
that cannot run on this host; introspection reports it as ``skip``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pycontainerd.errdefs import ContainerdError, NotFound


class PluginType(enum.StrEnum):
    """containerd's plugin type strings (plugin/plugin.go)."""

    INTERNAL = "io.containerd.internal.v1"
    RUNTIME = "io.containerd.runtime.v1"
    RUNTIME_V2 = "io.containerd.runtime.v2"
    SERVICE = "io.containerd.service.v1"
    GRPC = "io.containerd.grpc.v1"
    TTRPC = "io.containerd.ttrpc.v1"
    SNAPSHOT = "io.containerd.snapshotter.v1"
    TASK_MONITOR = "io.containerd.monitor.v1"
    DIFF = "io.containerd.differ.v1"
    METADATA = "io.containerd.metadata.v1"
    CONTENT = "io.containerd.content.v1"
    GC = "io.containerd.gc.v1"
    EVENT = "io.containerd.event.v1"
    LEASE = "io.containerd.lease.v1"
    SANDBOX_STORE = "io.containerd.sandbox.store.v1"
    SANDBOX_CONTROLLER = "io.containerd.sandbox.controller.v1"


class SkipPlugin(ContainerdError):
    """The plugin cannot run on this host; the daemon goes on without it.

    The text ``skip plugin`` is what ``ctr plugins ls`` looks for to print ``skip``.
    """

    kind = "skip plugin"


C = TypeVar("C")
T = TypeVar("T")


@dataclass(slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""


@dataclass(slots=True)
class Meta:
    """What a plugin tells introspection about itself while it initialises."""

    platforms: list[Platform] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Registration(Generic[C, T]):
    """How to build one plugin.

    ``requires`` lists plugin types that must be initialised first, or is ``"*"`` for a
    plugin that needs every other one (introspection does not; the server-side ones do).
    ``config`` is a frozen dataclass of defaults; the server decodes the plugin's
    ``[plugins."<uri>"]`` table over it.
    """

    type: PluginType
    id: str
    init: Callable[[InitContext[C]], Awaitable[T]]
    requires: tuple[PluginType, ...] | Literal["*"] = ()
    config: C | None = None

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"

    def requires_strings(self) -> list[str]:
        if self.requires == "*":
            return ["*"]
        return [str(t) for t in self.requires]


def graph(registrations: Iterable[Registration[Any, Any]]) -> list[Registration[Any, Any]]:
    """Order registrations so that each comes after the types it requires.

    Same walk as containerd's ``plugin.Graph``: in registration order, first add (depth
    first) every plugin of each required type, then the plugin itself. Duplicate URIs
    are a programming error.
    """
    regs = list(registrations)
    seen: set[str] = set()
    for r in regs:
        if r.uri in seen:
            raise ValueError(f"plugin {r.uri}: id already registered")
        seen.add(r.uri)
    ordered: list[Registration[Any, Any]] = []
    added: set[str] = set()
    visiting: set[str] = set()

    def visit(reg: Registration[Any, Any]) -> None:
        if reg.uri in added:
            return
        if reg.uri in visiting:
            raise ValueError(f"plugin {reg.uri}: dependency cycle")
        visiting.add(reg.uri)
        wanted = reg.requires
        for other in regs:
            if other.uri == reg.uri:
                continue
            if wanted == "*" or other.type in wanted:
                if wanted == "*" and other.requires == "*":
                    continue
                visit(other)
        visiting.discard(reg.uri)
        if reg.uri not in added:
            ordered.append(reg)
            added.add(reg.uri)

    for reg in regs:
        visit(reg)
    return ordered


@dataclass(slots=True)
class Plugin:
    """One registration's outcome: an instance, or the error that stopped it."""

    registration: Registration[Any, Any]
    meta: Meta
    config: Any
    instance: Any = None
    error: BaseException | None = None

    @property
    def uri(self) -> str:
        return self.registration.uri

    @property
    def skipped(self) -> bool:
        return isinstance(self.error, SkipPlugin)


class PluginSet:
    """The plugins initialised so far, in init order."""

    def __init__(self) -> None:
        self._ordered: list[Plugin] = []
        self._by_uri: dict[str, Plugin] = {}

    def add(self, plugin: Plugin) -> None:
        if plugin.uri in self._by_uri:
            raise ValueError(f"plugin {plugin.uri} already initialised")
        self._ordered.append(plugin)
        self._by_uri[plugin.uri] = plugin

    def __iter__(self) -> Iterator[Plugin]:
        return iter(list(self._ordered))

    def __len__(self) -> int:
        return len(self._ordered)

    def get(self, type_: PluginType, id_: str | None = None) -> Any:
        """The instance of the first (or the named) plugin of a type.

        Raises:
            NotFound: no plugin of that type (and id) was initialised.
            the plugin's own init error, if it failed or was skipped.
        """
        for p in self._ordered:
            if p.registration.type == type_ and (id_ is None or p.registration.id == id_):
                if p.error is not None:
                    raise p.error
                return p.instance
        what = f"{type_}.{id_}" if id_ else str(type_)
        raise NotFound(f"no plugins registered for {what}")

    def get_by_type(self, type_: PluginType) -> dict[str, Any]:
        """Every working instance of a type, by id (failed ones left out)."""
        return {
            p.registration.id: p.instance
            for p in self._ordered
            if p.registration.type == type_ and p.error is None
        }


@dataclass(slots=True)
class InitContext(Generic[C]):
    """What a plugin's init function receives."""

    registration: Registration[C, Any]
    root: Path
    state: Path
    config: C
    plugins: PluginSet
    meta: Meta = field(default_factory=Meta)
    properties: dict[str, str] = field(default_factory=dict)

    def get(self, type_: PluginType, id_: str | None = None) -> Any:
        """An already initialised plugin this one requires (see ``PluginSet.get``)."""
        return self.plugins.get(type_, id_)

    def typed(self, type_: PluginType, cls: type[T], id_: str | None = None) -> T:
        instance = self.plugins.get(type_, id_)
        if not isinstance(instance, cls):
            raise TypeError(f"plugin {type_} is {type(instance).__name__}, not {cls.__name__}")
        return instance
