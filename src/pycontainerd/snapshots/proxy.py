"""A snapshotter served by another process: containerd's ``snapshots/proxy``.

``[proxy_plugins.<name>]`` with ``type = "snapshot"`` makes ``<name>`` a snapshotter
(``io.containerd.snapshotter.v1.<name>``) whose every call goes over the
``containerd.services.snapshots.v1.Snapshots`` gRPC API to a unix socket. Each request
names the snapshotter ``<name>``, as containerd's proxy does; servers usually ignore it.

No ``containerd-namespace`` header is sent. containerd's proxy forwards only a namespace
set *in-process* on its context, and requests that reach containerd over gRPC carry
theirs as incoming metadata, which grpc-go does not pass on: for the calls our daemon
makes (all on behalf of gRPC clients) containerd sends none either. The metadata layer
already made the keys unique across namespaces, so the backend never needs one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2

from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from pycontainerd.config import DEFAULT_MAX_MESSAGE_SIZE
from pycontainerd.errdefs import InvalidArgument, Unavailable
from pycontainerd.errdefs_grpc import from_grpc
from pycontainerd.images import platforms
from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.plugin.registry import Platform
from pycontainerd.services.snapshots.service import info_to_pb, mounts_from_pb
from pycontainerd.services.timestamps import from_pb
from pycontainerd.snapshots.interface import Info, Kind, Mount, Usage

# How long the start-up probe waits for an answer; a server that accepts the
# connection but never answers must not hang the daemon's start.
PROBE_TIMEOUT = 10.0


def grpc_target(address: str) -> str:
    """The grpc target for a socket path (containerd's ``dialer.DialAddress``).

    ``unix:<path>`` covers both absolute and relative paths; an address that already
    names the scheme is used as given.
    """
    if address.startswith("unix:"):
        return address
    return f"unix:{address}"


def info_from_pb(info: pb.Info) -> Info:
    # containerd's toKind reads every kind it does not know as committed.
    value = int(info.kind)
    kind = Kind(value) if value in (Kind.VIEW, Kind.ACTIVE) else Kind.COMMITTED
    return Info(
        kind=kind,
        name=info.name,
        parent=info.parent,
        labels=dict(info.labels),
        created_at=from_pb(info.created_at),
        updated_at=from_pb(info.updated_at),
    )


def _raise(exc: grpc.RpcError) -> NoReturn:
    raise from_grpc(exc) from None


class ProxySnapshotter:
    """A ``snapshots.interface.Snapshotter`` whose calls go to a remote Snapshots service.

    Create it inside a running event loop (the grpc.aio channel binds to it). The
    channel connects lazily; ``check`` (or ``connect``) tells whether anyone answers.
    Every method raises the error kind the server sent (``NotFound`` stays
    ``NotFound``), and ``Unavailable`` when the socket cannot be reached.
    """

    def __init__(self, address: str, name: str, *, timeout: float | None = None) -> None:
        """``name`` goes in every request's ``snapshotter`` field; ``timeout`` (seconds)
        bounds each call, or nothing does when it is None (as in containerd, whose
        calls end with the client's request)."""
        self.address = address
        self.name = name
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            grpc_target(address),
            options=[
                ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_SIZE),
            ],
        )
        self._stub = pb_grpc.SnapshotsStub(self._channel)
        self._closed = False

    @classmethod
    async def connect(
        cls, address: str, name: str, *, timeout: float | None = None
    ) -> ProxySnapshotter:
        """A proxy that has been answered once (see ``check``).

        Raises:
            Unavailable: nothing answers on ``address``, or it does not serve the
                Snapshots API.
        """
        sn = cls(address, name, timeout=timeout)
        try:
            await sn.check()
        except BaseException:
            await sn.aclose()
            raise
        return sn

    async def check(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Make one call (Stat of the empty key) to see that a Snapshots server answers.

        Any answer from the service counts, ``NotFound`` being the usual one: only a
        failure to reach it, or a server without the service, is an error.

        Raises:
            Unavailable: the socket cannot be reached, the server does not answer
                within ``timeout``, or it does not implement the Snapshots service.
        """
        request = pb.StatSnapshotRequest(snapshotter=self.name, key="")
        try:
            await self._stub.Stat(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else "") or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    f"cannot reach snapshotter {self.name!r} at {self.address}: {details}"
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Unavailable(
                    f"snapshotter {self.name!r} at {self.address} did not answer "
                    f"within {timeout:g}s"
                ) from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise Unavailable(
                    f"{self.address} does not serve containerd.services.snapshots.v1."
                    f"Snapshots: {details}"
                ) from None
            # Any other status came from a live Snapshots server.

    def _kw(self) -> dict[str, Any]:
        return {"timeout": self._timeout}

    async def stat(self, key: str) -> Info:
        """Raises NotFound (or whatever the server sends)."""
        try:
            resp = await self._stub.Stat(
                pb.StatSnapshotRequest(snapshotter=self.name, key=key), **self._kw()
            )
        except grpc.RpcError as exc:
            _raise(exc)
        return info_from_pb(resp.info)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Raises NotFound, InvalidArgument (as the server sends them)."""
        request = pb.UpdateSnapshotRequest(
            snapshotter=self.name,
            info=info_to_pb(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        try:
            resp = await self._stub.Update(request, **self._kw())
        except grpc.RpcError as exc:
            _raise(exc)
        return info_from_pb(resp.info)

    async def usage(self, key: str) -> Usage:
        """Raises NotFound (or whatever the server sends)."""
        try:
            resp = await self._stub.Usage(
                pb.UsageRequest(snapshotter=self.name, key=key), **self._kw()
            )
        except grpc.RpcError as exc:
            _raise(exc)
        return Usage(size=resp.size, inodes=resp.inodes)

    async def mounts(self, key: str) -> list[Mount]:
        """Raises NotFound, FailedPrecondition (as the server sends them)."""
        try:
            resp = await self._stub.Mounts(
                pb.MountsRequest(snapshotter=self.name, key=key), **self._kw()
            )
        except grpc.RpcError as exc:
            _raise(exc)
        return mounts_from_pb(resp.mounts)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Raises AlreadyExists, NotFound, InvalidArgument (as the server sends them)."""
        request = pb.PrepareSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        try:
            resp = await self._stub.Prepare(request, **self._kw())
        except grpc.RpcError as exc:
            _raise(exc)
        return mounts_from_pb(resp.mounts)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Raises AlreadyExists, NotFound, InvalidArgument (as the server sends them)."""
        request = pb.ViewSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        try:
            resp = await self._stub.View(request, **self._kw())
        except grpc.RpcError as exc:
            _raise(exc)
        return mounts_from_pb(resp.mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Raises NotFound, AlreadyExists, FailedPrecondition (as the server sends them)."""
        request = pb.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=dict(labels or {})
        )
        try:
            await self._stub.Commit(request, **self._kw())
        except grpc.RpcError as exc:
            _raise(exc)

    async def remove(self, key: str) -> None:
        """Raises NotFound, FailedPrecondition (as the server sends them)."""
        try:
            await self._stub.Remove(
                pb.RemoveSnapshotRequest(snapshotter=self.name, key=key), **self._kw()
            )
        except grpc.RpcError as exc:
            _raise(exc)

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every snapshot the server lists, block by block as the stream delivers them.

        Raises:
            the server's error kind, also for an error that ends the stream midway.
        """
        call = self._stub.List(
            pb.ListSnapshotsRequest(snapshotter=self.name, filters=list(filters)), **self._kw()
        )
        try:
            async for resp in call:
                for info in resp.info:
                    yield info_from_pb(info)
        except grpc.RpcError as exc:
            _raise(exc)
        finally:
            # A caller that stops early must not leave the stream open on the server.
            call.cancel()

    async def cleanup(self) -> None:
        """Raises NotImplemented_ when the server has no Cleanup (containerd's
        snapshotservice answers so for a snapshotter that is not a Cleaner)."""
        try:
            await self._stub.Cleanup(pb.CleanupRequest(snapshotter=self.name), **self._kw())
        except grpc.RpcError as exc:
            _raise(exc)

    async def aclose(self) -> None:
        """Close the channel; calls after this fail. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close(None)  # cancel calls in flight: the snapshotter is gone


# --- the plugin ---------------------------------------------------------------------------


def registration(
    name: str, address: str, platform: str = ""
) -> Registration[None, ProxySnapshotter]:
    """``io.containerd.snapshotter.v1.<name>`` for ``[proxy_plugins.<name>]``.

    Its init reports ``address`` and the platform in introspection, as containerd 1.7
    does, and fails (leaving the daemon running without it) when nothing serves the
    Snapshots API on ``address``.

    Raises:
        InvalidArgument: no address, or a platform that does not parse; raised here so
            that a bad config stops start-up, as other config errors do.
    """
    where = f"config proxy_plugins.{name}"
    if not address:
        raise InvalidArgument(f"{where}: address is required")
    try:
        parsed = platforms.parse_platform(platform) if platform else None
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: platform: {exc.message}") from None
    if parsed is None:  # containerd reports the host's os/arch, without a CPU variant
        plat = Platform("linux", platforms.normalize_arch(os.uname().machine, "")[0])
    else:
        plat = Platform(parsed.os, parsed.architecture, parsed.variant)

    async def init(ic: InitContext[None]) -> ProxySnapshotter:
        ic.meta.exports["address"] = address
        ic.meta.platforms.append(plat)
        try:
            return await ProxySnapshotter.connect(address, name)
        except Unavailable as exc:
            raise Unavailable(f"proxy plugin {name}: {exc.message}") from None

    return Registration(type=PluginType.SNAPSHOT, id=name, init=init)
