"""Leases over gRPC: ``client.leases`` and the ``client.lease()`` context manager.

A lease keeps what is written under it (content, ingests, snapshots, images) from the
garbage collector until the lease is deleted or expires (``containerd.io/gc.expire``).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pycontainerd import leases as lease_names
from pycontainerd.client.aio import AsyncAPI, current_lease

from pycontainerd._api.containerd.services.leases.v1 import (  # isort: skip
    leases_pb2 as pb,
    leases_pb2_grpc as pb_grpc,
)

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

DEFAULT_EXPIRE = datetime.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    type: str  # "content", "ingests", "snapshots/<snapshotter>" …


def _lease(pbl: pb.Lease) -> Lease:
    created = None
    if pbl.created_at.seconds or pbl.created_at.nanos:
        created = pbl.created_at.ToDatetime(tzinfo=datetime.UTC)
    return Lease(pbl.id, dict(pbl.labels), created)


def expire_label(expire: datetime.timedelta) -> str:
    """The ``containerd.io/gc.expire`` value (RFC 3339, UTC) ``expire`` from now."""
    at = datetime.datetime.now(datetime.UTC) + expire
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeasesAPI(AsyncAPI):
    """``client.leases``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def _stub(self) -> pb_grpc.LeasesAsyncStub:
        return pb_grpc.LeasesStub(self._client.channel)

    async def create(
        self,
        id: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        expire: datetime.timedelta | None = None,
    ) -> Lease:
        """Create a lease (``id`` random when empty), expiring after ``expire`` if given.

        Raises AlreadyExists, or InvalidArgument for a bad id.
        """
        all_labels = dict(labels or {})
        if expire is not None:
            all_labels[lease_names.LABEL_EXPIRE] = expire_label(expire)
        req = pb.CreateRequest(id=id or _random_id(), labels=all_labels)
        return _lease((await self._client.call(self._stub.Create, req)).lease)

    async def delete(self, id: str, *, sync: bool = False) -> None:
        """Delete a lease; ``sync`` waits for the garbage collection it triggers.

        Raises NotFound.
        """
        await self._client.call(self._stub.Delete, pb.DeleteRequest(id=id, sync=sync))

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Lease]:
        resp = await self._client.call(self._stub.List, pb.ListRequest(filters=list(filters)))
        return [_lease(lease) for lease in resp.leases]

    async def resources(self, id: str) -> builtins.list[Resource]:
        """What the lease holds. Raises NotFound."""
        resp = await self._client.call(self._stub.ListResources, pb.ListResourcesRequest(id=id))
        return [Resource(r.id, r.type) for r in resp.resources]

    async def add_resource(self, id: str, resource: Resource) -> None:
        req = pb.AddResourceRequest(id=id, resource=pb.Resource(id=resource.id, type=resource.type))
        await self._client.call(self._stub.AddResource, req)

    async def delete_resource(self, id: str, resource: Resource) -> None:
        req = pb.DeleteResourceRequest(
            id=id, resource=pb.Resource(id=resource.id, type=resource.type)
        )
        await self._client.call(self._stub.DeleteResource, req)


def _random_id() -> str:
    return "pycontainerd-" + secrets.token_hex(8)


@contextlib.asynccontextmanager
async def lease(
    client: AsyncClient,
    *,
    expire: datetime.timedelta | None = DEFAULT_EXPIRE,
    labels: Mapping[str, str] | None = None,
    sync_delete: bool = False,
) -> AsyncIterator[Lease]:
    """A new lease that the calls in the block carry; deleted when the block ends.

    An enclosing lease is reused instead (nothing is created or deleted), as
    containerd's ``WithLease`` does. The client's ``default_lease`` is set for the
    block too, since the blocking facade runs each call in its own task.
    """
    existing = current_lease.get() or client.default_lease
    if existing:
        yield Lease(existing)
        return
    created = await LeasesAPI(client).create(labels=labels, expire=expire)
    token = current_lease.set(created.id)
    client.default_lease = created.id
    try:
        yield created
    finally:
        # The blocking facade enters and exits in different tasks (contexts).
        with contextlib.suppress(ValueError):
            current_lease.reset(token)
        client.default_lease = None
        await LeasesAPI(client).delete(created.id, sync=sync_delete)
