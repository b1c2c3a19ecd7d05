"""Serve one backend snapshotter over the Snapshots gRPC API (containerd's
``contrib/snapshotservice``), for a daemon's ``[proxy_plugins]`` to use.

The backend is a plain ``snapshots.interface.Snapshotter`` (overlayfs, native, ...):
no namespaces, no events. The ``snapshotter`` field of requests is ignored, as in
containerd, because the socket serves exactly one snapshotter whatever a client calls
it. Errors leave as containerd's status codes through ``ContainerdInterceptor``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from pycontainerd.config import DEFAULT_MAX_MESSAGE_SIZE
from pycontainerd.errdefs_grpc import ContainerdInterceptor
from pycontainerd.services.snapshots.service import LIST_BLOCK, info_to_pb, mounts_to_pb
from pycontainerd.services.timestamps import from_pb
from pycontainerd.snapshots.interface import Info, Kind, Snapshotter
from pycontainerd.snapshots.proxy import grpc_target

logger = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]


def _request_info(info: pb.Info) -> Info:
    # The kind an update carries is whatever the client sent; backends read only the
    # name and labels, so an unknown value is kept as UNKNOWN rather than guessed.
    try:
        kind = Kind(info.kind)
    except ValueError:
        kind = Kind.UNKNOWN
    return Info(
        kind,
        info.name,
        info.parent,
        dict(info.labels),
        from_pb(info.created_at),
        from_pb(info.updated_at),
    )


class SnapshotterService(pb_grpc.SnapshotsServicer):
    """The Snapshots API over one backend snapshotter."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    async def Prepare(
        self, request: pb.PrepareSnapshotRequest, context: Ctx
    ) -> pb.PrepareSnapshotResponse:
        mounts = await self.snapshotter.prepare(request.key, request.parent, dict(request.labels))
        return pb.PrepareSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def View(self, request: pb.ViewSnapshotRequest, context: Ctx) -> pb.ViewSnapshotResponse:
        mounts = await self.snapshotter.view(request.key, request.parent, dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def Mounts(self, request: pb.MountsRequest, context: Ctx) -> pb.MountsResponse:
        mounts = await self.snapshotter.mounts(request.key)
        return pb.MountsResponse(mounts=mounts_to_pb(mounts))

    async def Commit(self, request: pb.CommitSnapshotRequest, context: Ctx) -> empty_pb2.Empty:
        await self.snapshotter.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    async def Remove(self, request: pb.RemoveSnapshotRequest, context: Ctx) -> empty_pb2.Empty:
        await self.snapshotter.remove(request.key)
        return empty_pb2.Empty()

    async def Stat(self, request: pb.StatSnapshotRequest, context: Ctx) -> pb.StatSnapshotResponse:
        info = await self.snapshotter.stat(request.key)
        return pb.StatSnapshotResponse(info=info_to_pb(info))

    async def Update(
        self, request: pb.UpdateSnapshotRequest, context: Ctx
    ) -> pb.UpdateSnapshotResponse:
        info = _request_info(request.info)
        updated = await self.snapshotter.update(info, list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_to_pb(updated))

    async def List(
        self, request: pb.ListSnapshotsRequest, context: Ctx
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        # Blocks of 100, as containerd's snapshotservice sends them.
        block: list[pb.Info] = []
        async for info in self.snapshotter.walk(list(request.filters)):
            block.append(info_to_pb(info))
            if len(block) >= LIST_BLOCK:
                yield pb.ListSnapshotsResponse(info=block)
                block = []
        if block:
            yield pb.ListSnapshotsResponse(info=block)

    async def Usage(self, request: pb.UsageRequest, context: Ctx) -> pb.UsageResponse:
        usage = await self.snapshotter.usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(self, request: pb.CleanupRequest, context: Ctx) -> empty_pb2.Empty:
        await self.snapshotter.cleanup()
        return empty_pb2.Empty()


async def serve(snapshotter: Snapshotter, address: str | Path) -> grpc.aio.Server:
    """Start serving ``snapshotter`` on the unix socket ``address`` (mode 0660, since
    whoever can call it can have the host mount what it returns).

    The caller stops the returned server and removes the socket (``stop``). The path
    must be free: see ``server.server.check_socket`` for a stale one.

    Raises:
        RuntimeError: grpc could not bind the socket (a path too long for a unix
            socket, a missing directory, the path in use).
    """
    server = grpc.aio.server(
        interceptors=[ContainerdInterceptor()],
        options=[
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_SIZE),
            ("grpc.so_reuseport", 0),
        ],
    )
    SnapshotterService(snapshotter).register(server)
    server.add_insecure_port(grpc_target(str(address)))
    await server.start()
    with contextlib.suppress(OSError):
        os.chmod(address, 0o660)
    return server


async def stop(server: grpc.aio.Server, address: str | Path, grace: float = 10.0) -> None:
    """Let in-flight calls finish within ``grace`` seconds, then remove the socket."""
    await server.stop(grace)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
