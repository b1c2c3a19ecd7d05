"""The namespaces service logic, shaped like the gRPC API so in-process callers share it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from pycontainerd import namespaces as nsctx
from pycontainerd._api.containerd.events import namespace_pb2 as events_pb
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.events.exchange import Exchange
from pycontainerd.identifiers import go_quote
from pycontainerd.metadata import namespaces as store
from pycontainerd.metadata.db import DB
from pycontainerd.metadata.namespaces import Namespace


class NamespacesLocal:
    def __init__(self, db: DB, exchange: Exchange) -> None:
        self._db = db
        self._events = exchange

    async def get(self, name: str) -> Namespace:
        """Raises NotFound."""
        return await self._db.view(lambda conn: store.get(conn, name), point=True)

    async def list(self) -> list[Namespace]:
        return await self._db.view(store.list_all)

    async def create(self, name: str, labels: dict[str, str]) -> Namespace:
        """Raises InvalidArgument or AlreadyExists; publishes ``/namespaces/create``."""
        created = await self._db.update(lambda conn: store.create(conn, name, labels))
        with nsctx.with_namespace(name):
            await self._events.publish(
                "/namespaces/create", events_pb.NamespaceCreate(name=name, labels=created.labels)
            )
        return created

    async def update(self, name: str, labels: dict[str, str], paths: Sequence[str]) -> Namespace:
        """Update labels: only ``labels.<key>`` paths, or all labels when no mask is given.

        Raises:
            NotFound, InvalidArgument (a path other than ``labels.<key>``).
        """
        for path in paths:
            if not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {go_quote(path)} field")

        def apply(conn: sqlite3.Connection) -> Namespace:
            if paths:
                for path in paths:
                    key = path.removeprefix("labels.")
                    store.set_label(conn, name, key, labels.get(key, ""))
            else:
                store.replace_labels(conn, name, labels)
            return store.get(conn, name)

        updated = await self._db.update(apply)
        with nsctx.with_namespace(name):
            await self._events.publish(
                "/namespaces/update", events_pb.NamespaceUpdate(name=name, labels=updated.labels)
            )
        return updated

    async def delete(self, name: str) -> None:
        """Raises NotFound, or FailedPrecondition while the namespace holds anything."""
        await self._db.update(lambda conn: store.delete(conn, name))
        with nsctx.with_namespace(name):
            await self._events.publish("/namespaces/delete", events_pb.NamespaceDelete(name=name))
