"""Snapshots over gRPC, for one snapshotter: ``client.snapshots("overlayfs")``.

Values are the core's (``pycontainerd.snapshots.interface``: ``Info``, ``Mount``,
``Usage``, ``Kind``) so code written against a local snapshotter reads the same.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import field_mask_pb2

from pycontainerd.client.aio import AsyncAPI
from pycontainerd.snapshots.interface import Info, Kind, Mount, Usage

from pycontainerd._api.containerd.services.snapshots.v1 import (  # isort: skip
    snapshots_pb2 as pb,
    snapshots_pb2_grpc as pb_grpc,
)
from pycontainerd._api.containerd.types import mount_pb2

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

DEFAULT_SNAPSHOTTER = "overlayfs"


def _ns(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def info_from_proto(i: pb.Info) -> Info:
    return Info(
        kind=Kind(i.kind),
        name=i.name,
        parent=i.parent,
        labels=dict(i.labels),
        created_at=_ns(i.created_at),
        updated_at=_ns(i.updated_at),
    )


def mounts_from_proto(mounts: Sequence[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts]


def mounts_to_proto(mounts: Sequence[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


class SnapshotsAPI(AsyncAPI):
    """The snapshots of one snapshotter. Keys name active snapshots, names committed ones."""

    def __init__(self, client: AsyncClient, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self._client = client
        self.snapshotter = snapshotter

    @property
    def _stub(self) -> pb_grpc.SnapshotsAsyncStub:
        return pb_grpc.SnapshotsStub(self._client.channel)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """An active snapshot on ``parent``; returns its mounts.

        Raises:
            AlreadyExists: ``key`` is taken.
            NotFound: no such parent (or snapshotter).
        """
        req = pb.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_proto((await self._client.call(self._stub.Prepare, req)).mounts)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A read-only view of ``parent``. Raises AlreadyExists or NotFound."""
        req = pb.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_proto((await self._client.call(self._stub.View, req)).mounts)

    async def mounts(self, key: str) -> list[Mount]:
        """Raises NotFound (or FailedPrecondition for a committed snapshot)."""
        req = pb.MountsRequest(snapshotter=self.snapshotter, key=key)
        return mounts_from_proto((await self._client.call(self._stub.Mounts, req)).mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Commit active ``key`` as ``name``. Raises NotFound, AlreadyExists."""
        req = pb.CommitSnapshotRequest(
            snapshotter=self.snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self._client.call(self._stub.Commit, req)

    async def remove(self, key: str) -> None:
        """Raises NotFound, or FailedPrecondition while children exist."""
        req = pb.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        await self._client.call(self._stub.Remove, req)

    async def stat(self, key: str) -> Info:
        """Raises NotFound."""
        req = pb.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        return info_from_proto((await self._client.call(self._stub.Stat, req)).info)

    async def update_labels(self, key: str, labels: Mapping[str, str]) -> Info:
        """Set labels (an empty value removes one). Raises NotFound."""
        req = pb.UpdateSnapshotRequest(
            snapshotter=self.snapshotter,
            info=pb.Info(name=key, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        return info_from_proto((await self._client.call(self._stub.Update, req)).info)

    async def usage(self, key: str) -> Usage:
        """Raises NotFound."""
        req = pb.UsageRequest(snapshotter=self.snapshotter, key=key)
        resp = await self._client.call(self._stub.Usage, req)
        return Usage(resp.size, resp.inodes)

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every snapshot matching any filter. Raises InvalidArgument for a bad filter."""
        req = pb.ListSnapshotsRequest(snapshotter=self.snapshotter, filters=list(filters))
        async for resp in self._client.stream(self._stub.List, req):
            for i in resp.info:
                yield info_from_proto(i)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        """``walk`` collected into a list."""
        return [i async for i in self.walk(filters)]

    async def cleanup(self) -> None:
        """Ask the snapshotter to release unused resources (NotImplemented_ if it cannot)."""
        await self._client.call(self._stub.Cleanup, pb.CleanupRequest(snapshotter=self.snapshotter))
