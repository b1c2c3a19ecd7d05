"""The containers service logic: the namespaced container store plus events.

In-process callers (tasks, CRI) use this directly; ``service.py`` only converts
protobuf. Events are published after the transaction commits, as containerd's
services/containers/local.go does.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import any_pb2

from pycontainerd import namespaces
from pycontainerd._api.containerd.events import container_pb2 as events_pb
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata import containers as store
from pycontainerd.metadata.containers import Container, TypedValue
from pycontainerd.metadata.db import DB
from pycontainerd.sansio import filters


def any_to_pb(value: TypedValue | None) -> any_pb2.Any | None:
    if value is None:
        return None
    return any_pb2.Any(type_url=value.type_url, value=value.value)


class ContainersLocal:
    def __init__(self, db: DB, exchange: Exchange) -> None:
        self._db = db
        self._events = exchange

    async def get(self, id: str) -> Container:
        """Raises NotFound."""
        ns = namespaces.required()
        return await self._db.view(lambda conn: store.get(conn, ns, id), point=True)

    async def list(self, filter_strings: Sequence[str]) -> list[Container]:
        """Containers matching any of the filters (all when none are given).

        Raises:
            InvalidArgument: a filter does not parse.
        """
        ns = namespaces.required()
        flt = filters.parse_all(list(filter_strings))
        found = await self._db.view(lambda conn: store.list_all(conn, ns))
        return [c for c in found if flt.match(store.container_fields(c))]

    async def create(self, container: Container) -> Container:
        """Raises InvalidArgument or AlreadyExists."""
        ns = namespaces.required()
        created = await self._db.update(lambda conn: store.create(conn, ns, container))
        await self._events.publish(
            "/containers/create",
            events_pb.ContainerCreate(
                id=created.id,
                image=created.image,
                runtime=events_pb.ContainerCreate.Runtime(
                    name=created.runtime.name, options=any_to_pb(created.runtime.options)
                ),
            ),
        )
        return created

    async def update(self, container: Container, fieldpaths: Sequence[str]) -> Container:
        """Update by field mask (see ``metadata.containers.update``).

        Raises:
            InvalidArgument, NotFound.
        """
        if not container.id:
            raise InvalidArgument("Container.ID required")
        ns = namespaces.required()
        updated = await self._db.update(lambda conn: store.update(conn, ns, container, fieldpaths))
        await self._events.publish(
            "/containers/update",
            events_pb.ContainerUpdate(
                id=updated.id,
                image=updated.image,
                labels=updated.labels,
                snapshot_key=updated.snapshot_key,
            ),
        )
        return updated

    async def delete(self, id: str) -> None:
        """Delete the record; its snapshot becomes collectable. Raises NotFound."""
        ns = namespaces.required()
        await self._db.update(lambda conn: store.delete(conn, ns, id))
        self._db.deleted()
        await self._events.publish("/containers/delete", events_pb.ContainerDelete(id=id))
