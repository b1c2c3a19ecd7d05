"""The asyncio client: one grpc.aio channel to a daemon, and the APIs built on it.

Every call raises ``pycontainerd.errdefs`` kinds for the daemon's errors (``NotFound``,
``AlreadyExists`` …, carrying the daemon's message) and ``Unavailable`` when the daemon
cannot be reached. Feature areas live in their own modules and hang off the client as
attributes (``client.images``, ``client.content`` …) so that each stays small.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import empty_pb2, field_mask_pb2, message

from pycontainerd import leases, namespaces, typeurl
from pycontainerd._api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from pycontainerd._api.containerd.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from pycontainerd._api.containerd.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from pycontainerd._api.containerd.services.version.v1 import version_pb2_grpc
from pycontainerd.config import DEFAULT_ADDRESS
from pycontainerd.errdefs import NotFound
from pycontainerd.errdefs_grpc import from_grpc

if TYPE_CHECKING:
    from pycontainerd.client.containers import Container, ContainersAPI
    from pycontainerd.client.content import ContentAPI
    from pycontainerd.client.images import ImagesAPI
    from pycontainerd.client.leases import Lease, LeasesAPI
    from pycontainerd.client.snapshots import SnapshotsAPI
    from pycontainerd.client.tasks import TasksAPI
    from pycontainerd.client.types import Descriptor, Image
    from pycontainerd.oci.spec import SpecOpt

Resp = TypeVar("Resp")

# gRPC's default is 4 MiB; containerd's clients raise it so large manifests and specs pass.
MAX_MESSAGE = 16 << 20

# The lease that calls made in this context carry (set by ``AsyncClient.lease``).
current_lease: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pycontainerd_client_lease", default=None
)


@dataclass(frozen=True, slots=True)
class ServerVersion:
    version: str
    revision: str
    uuid: str


@dataclass(frozen=True, slots=True)
class PluginInfo:
    type: str
    id: str
    requires: tuple[str, ...]
    platforms: tuple[str, ...]
    exports: Mapping[str, str]
    capabilities: tuple[str, ...]
    error: str | None  # the init error's message, or None

    @property
    def status(self) -> str:
        if self.error is None:
            return "ok"
        return "skip" if "skip plugin" in self.error else "error"


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    timestamp_ns: int
    namespace: str
    topic: str
    event: Any  # the decoded protobuf message, or the raw Any if its type is unknown


class AsyncAPI:
    """Base of the feature APIs hanging off a client; the blocking facade wraps these."""


class AsyncClient:
    """A connection to a daemon for asyncio code: ``async with AsyncClient(...) as c``.

    ``address`` defaults to ``$CONTAINERD_ADDRESS`` or containerd's socket, ``namespace``
    to ``$CONTAINERD_NAMESPACE`` or ``default``. ``timeout`` bounds each unary call.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        namespace: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.address = address or os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_ADDRESS
        self.namespace = namespace or os.environ.get(namespaces.ENV_VAR) or namespaces.DEFAULT
        self.timeout = timeout
        # The lease calls carry when no ``current_lease`` is set in the caller's context;
        # the blocking facade uses it, since its calls run in another thread's tasks.
        self.default_lease: str | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The gRPC channel, created on first use inside the running loop."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.address}",
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                ],
            )
        return self._channel

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata every call carries: the namespace, and the lease if one is set."""
        md = [(namespaces.GRPC_HEADER, self.namespace)]
        lease = current_lease.get() or self.default_lease
        if lease:
            md.append((leases.GRPC_HEADER, lease))
        return tuple(md)

    async def call(
        self, method: Callable[..., Awaitable[Resp]], request: Any, *, timeout: float | None = None
    ) -> Resp:
        """One unary call with this client's metadata, errors mapped to errdefs kinds."""
        try:
            return await method(request, metadata=self.metadata(), timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None

    async def stream(self, method: Callable[..., Any], request: Any) -> AsyncIterator[Any]:
        """The responses of a server-streaming call, errors mapped to errdefs kinds."""
        call = method(request, metadata=self.metadata())
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_grpc(exc) from None
        finally:
            call.cancel()

    # -- images, content, snapshots and leases ---------------------------------------------

    @property
    def images(self) -> ImagesAPI:
        from pycontainerd.client.images import ImagesAPI

        return ImagesAPI(self)

    @property
    def content(self) -> ContentAPI:
        from pycontainerd.client.content import ContentAPI

        return ContentAPI(self)

    def snapshots(self, name: str = "overlayfs") -> SnapshotsAPI:
        """The snapshots of snapshotter ``name``."""
        from pycontainerd.client.snapshots import SnapshotsAPI

        return SnapshotsAPI(self, name)

    @property
    def leases(self) -> LeasesAPI:
        from pycontainerd.client.leases import LeasesAPI

        return LeasesAPI(self)

    def lease(self, **kwargs: Any) -> AbstractAsyncContextManager[Lease]:
        """A lease for the block: see ``pycontainerd.client.leases.lease``."""
        from pycontainerd.client.leases import lease

        return lease(self, **kwargs)

    # -- containers and tasks ------------------------------------------------------------

    @property
    def containers(self) -> ContainersAPI:
        from pycontainerd.client.containers import ContainersAPI

        return ContainersAPI(self)

    @property
    def tasks(self) -> TasksAPI:
        from pycontainerd.client.tasks import TasksAPI

        return TasksAPI(self)

    async def new_container(self, id: str, image: str, *opts: SpecOpt, **kwargs: Any) -> Container:
        """``containers.new``: a container from an unpacked image (see there)."""
        return await self.containers.new(id, image, *opts, **kwargs)

    # -- registries ----------------------------------------------------------------------

    async def pull(self, ref: str, **kwargs: Any) -> Image:
        """Pull ``ref`` from its registry: see ``pycontainerd.client.pull.pull``."""
        from pycontainerd.client.pull import pull

        return await pull(self, ref, **kwargs)

    async def push(
        self, ref: str, image: str | Descriptor | None = None, **kwargs: Any
    ) -> Descriptor:
        """Push an image to ``ref``'s registry: see ``pycontainerd.client.push.push``."""
        from pycontainerd.client.push import push

        return await push(self, ref, image, **kwargs)

    # -- server --------------------------------------------------------------------------

    async def version(self) -> ServerVersion:
        """The server's version, revision and UUID."""
        v = await self.call(version_pb2_grpc.VersionStub(self.channel).Version, empty_pb2.Empty())
        intro = introspection_pb2_grpc.IntrospectionStub(self.channel)
        server = await self.call(intro.Server, empty_pb2.Empty())
        return ServerVersion(v.version, v.revision, server.uuid)

    async def plugins(self, filters: Sequence[str] = ()) -> list[PluginInfo]:
        """Plugins matching any of the filters (containerd's filter syntax).

        Raises:
            InvalidArgument: a filter does not parse.
        """
        stub = introspection_pb2_grpc.IntrospectionStub(self.channel)
        resp = await self.call(stub.Plugins, introspection_pb2.PluginsRequest(filters=filters))
        return [
            PluginInfo(
                p.type,
                p.id,
                tuple(p.requires),
                tuple(
                    "/".join(x for x in (pl.os, pl.architecture, pl.variant) if x)
                    for pl in p.platforms
                ),
                dict(p.exports),
                tuple(p.capabilities),
                p.init_err.message if p.HasField("init_err") else None,
            )
            for p in resp.plugins
        ]

    # -- namespaces ----------------------------------------------------------------------

    async def namespaces(self) -> list[Namespace]:
        stub = namespace_pb2_grpc.NamespacesStub(self.channel)
        resp = await self.call(stub.List, namespace_pb2.ListNamespacesRequest())
        return [Namespace(n.name, dict(n.labels)) for n in resp.namespaces]

    async def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None
    ) -> Namespace:
        """Raises InvalidArgument (bad name) or AlreadyExists."""
        stub = namespace_pb2_grpc.NamespacesStub(self.channel)
        req = namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=name, labels=dict(labels or {}))
        )
        n = (await self.call(stub.Create, req)).namespace
        return Namespace(n.name, dict(n.labels))

    async def label_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        """Set labels (an empty value removes one). Raises NotFound."""
        stub = namespace_pb2_grpc.NamespacesStub(self.channel)
        req = namespace_pb2.UpdateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=name, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        await self.call(stub.Update, req)

    async def delete_namespace(self, name: str) -> None:
        """Raises NotFound, or FailedPrecondition while the namespace holds anything."""
        stub = namespace_pb2_grpc.NamespacesStub(self.channel)
        await self.call(stub.Delete, namespace_pb2.DeleteNamespaceRequest(name=name))

    # -- events --------------------------------------------------------------------------

    async def events(self, filters: Sequence[str] = ()) -> AsyncIterator[EventEnvelope]:
        """Events as they happen, until the caller stops iterating or the daemon stops."""
        stub = events_pb2_grpc.EventsStub(self.channel)
        async for env in self.stream(
            stub.Subscribe, events_pb2.SubscribeRequest(filters=list(filters))
        ):
            try:
                event: Any = typeurl.unmarshal_any(env.event)
            except (NotFound, message.DecodeError):  # a type this client does not know
                event = env.event
            yield EventEnvelope(env.timestamp.ToNanoseconds(), env.namespace, env.topic, event)
