"""The leases service logic."""

from __future__ import annotations

import base64
import builtins
import os
import time
from collections.abc import Mapping, Sequence

from pycontainerd import namespaces
from pycontainerd.metadata import leases as store
from pycontainerd.metadata.db import DB
from pycontainerd.metadata.leases import Lease, Resource
from pycontainerd.sansio import filters
from pycontainerd.services.images.local import Collects


def random_id() -> str:
    """An id in the shape containerd's WithRandomID makes: ``<nanos>-<base64>``."""
    nanos = time.time_ns() % 1_000_000_000
    return f"{nanos}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def lease_fields(lease: Lease) -> filters.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if path == ("id",):
            return lease.id, bool(lease.id)
        if len(path) >= 2 and path[0] == "labels":
            key = ".".join(path[1:])
            return lease.labels.get(key, ""), key in lease.labels
        return "", False

    return field


class LeasesLocal:
    def __init__(self, db: DB, gc: Collects) -> None:
        self._db = db
        self._gc = gc

    async def create(self, lease_id: str, labels: Mapping[str, str]) -> Lease:
        ns = namespaces.required()
        lease_id = lease_id or random_id()
        return await self._db.update(lambda conn: store.create(conn, ns, lease_id, labels))

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        ns = namespaces.required()
        await self._db.update(lambda conn: store.delete(conn, ns, lease_id))
        self._db.deleted()
        if sync:
            await self._gc.schedule_and_wait()

    async def list(self, filter_strings: Sequence[str]) -> list[Lease]:
        ns = namespaces.required()
        flt = filters.parse_all(list(filter_strings))
        found = await self._db.view(lambda conn: store.list_all(conn, ns))
        return [lease for lease in found if flt.match(lease_fields(lease))]

    async def add_resource(self, lease_id: str, res: Resource) -> None:
        ns = namespaces.required()
        await self._db.update(lambda conn: store.add_resource(conn, ns, lease_id, res))

    async def delete_resource(self, lease_id: str, res: Resource) -> None:
        ns = namespaces.required()
        await self._db.update(lambda conn: store.delete_resource(conn, ns, lease_id, res))
        self._db.deleted()

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        ns = namespaces.required()
        return await self._db.view(lambda conn: store.list_resources(conn, ns, lease_id))
