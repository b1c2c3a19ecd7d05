"""A blocking client over grpcio: version, introspection, namespaces and events."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, field_mask_pb2, message

from pycontainerd import namespaces, typeurl
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

T = TypeVar("T")


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


class Client:
    """A connection to a daemon. Use as a context manager, or call ``close``.

    Every method raises ``pycontainerd.errdefs`` kinds for the daemon's errors, and
    ``Unavailable`` when the daemon cannot be reached.
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
        self._channel = grpc.insecure_channel(f"unix://{self.address}")

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ((namespaces.GRPC_HEADER, self.namespace),)

    def _call(self, fn: Callable[..., T], request: Any) -> T:
        try:
            return fn(request, metadata=self._metadata(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_grpc(exc) from None

    def version(self) -> ServerVersion:
        """The server's version, revision and UUID."""
        v = self._call(version_pb2_grpc.VersionStub(self._channel).Version, empty_pb2.Empty())
        intro = introspection_pb2_grpc.IntrospectionStub(self._channel)
        server = self._call(intro.Server, empty_pb2.Empty())
        return ServerVersion(v.version, v.revision, server.uuid)

    def plugins(self, filters: Sequence[str] = ()) -> list[PluginInfo]:
        """Plugins matching any of the filters (containerd's filter syntax).

        Raises:
            InvalidArgument: a filter does not parse.
        """
        stub = introspection_pb2_grpc.IntrospectionStub(self._channel)
        resp = self._call(stub.Plugins, introspection_pb2.PluginsRequest(filters=list(filters)))
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

    def namespaces(self) -> list[Namespace]:
        stub = namespace_pb2_grpc.NamespacesStub(self._channel)
        resp = self._call(stub.List, namespace_pb2.ListNamespacesRequest())
        return [Namespace(n.name, dict(n.labels)) for n in resp.namespaces]

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Raises InvalidArgument (bad name) or AlreadyExists."""
        stub = namespace_pb2_grpc.NamespacesStub(self._channel)
        req = namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=name, labels=dict(labels or {}))
        )
        n = self._call(stub.Create, req).namespace
        return Namespace(n.name, dict(n.labels))

    def label_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        """Set labels (an empty value removes one)."""
        stub = namespace_pb2_grpc.NamespacesStub(self._channel)
        req = namespace_pb2.UpdateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=name, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        self._call(stub.Update, req)

    def delete_namespace(self, name: str) -> None:
        """Raises NotFound, or FailedPrecondition while the namespace holds anything."""
        stub = namespace_pb2_grpc.NamespacesStub(self._channel)
        self._call(stub.Delete, namespace_pb2.DeleteNamespaceRequest(name=name))

    def events(self, filters: Sequence[str] = ()) -> Iterator[EventEnvelope]:
        """Events as they happen, until the caller stops iterating or the daemon stops."""
        stub = events_pb2_grpc.EventsStub(self._channel)
        stream = stub.Subscribe(
            events_pb2.SubscribeRequest(filters=list(filters)), metadata=self._metadata()
        )
        try:
            for env in stream:
                try:
                    event: Any = typeurl.unmarshal_any(env.event)
                except (NotFound, message.DecodeError):  # a type this client does not know
                    event = env.event
                yield EventEnvelope(env.timestamp.ToNanoseconds(), env.namespace, env.topic, event)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_grpc(exc) from None
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]
