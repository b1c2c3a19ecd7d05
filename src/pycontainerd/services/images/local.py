"""The images service logic: the namespaced image store plus events and sync GC."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Protocol

from pycontainerd import identifiers, namespaces
from pycontainerd._api.containerd.events import image_pb2 as events_pb
from pycontainerd.errdefs import NotFound
from pycontainerd.events.exchange import Exchange
from pycontainerd.metadata import images as store
from pycontainerd.metadata.db import DB
from pycontainerd.metadata.images import Image
from pycontainerd.sansio import filters


class Collects(Protocol):
    async def schedule_and_wait(self) -> object: ...


class ImagesLocal:
    def __init__(self, db: DB, exchange: Exchange, gc: Collects) -> None:
        self._db = db
        self._events = exchange
        self._gc = gc

    async def get(self, name: str) -> Image:
        ns = namespaces.required()
        return await self._db.view(lambda conn: store.get(conn, ns, name), point=True)

    async def list(self, filter_strings: Sequence[str]) -> list[Image]:
        ns = namespaces.required()
        flt = filters.parse_all(list(filter_strings))
        found = await self._db.view(lambda conn: store.list_all(conn, ns))
        return [img for img in found if flt.match(store.image_fields(img))]

    async def create(self, img: Image) -> Image:
        ns = namespaces.required()
        created = await self._db.update(lambda conn: store.create(conn, ns, img))
        await self._events.publish(
            "/images/create", events_pb.ImageCreate(name=created.name, labels=created.labels)
        )
        return created

    async def update(self, img: Image, fieldpaths: Sequence[str]) -> Image:
        ns = namespaces.required()
        updated = await self._db.update(lambda conn: store.update(conn, ns, img, fieldpaths))
        await self._events.publish(
            "/images/update", events_pb.ImageUpdate(name=updated.name, labels=updated.labels)
        )
        return updated

    async def delete(self, name: str, *, sync: bool = False, target: str | None = None) -> None:
        """Delete an image; with ``sync``, return only after garbage collection.

        Raises:
            NotFound: no such image, or ``target`` is given and differs.
        """
        ns = namespaces.required()

        def apply(conn: sqlite3.Connection) -> None:
            if target is not None and store.get(conn, ns, name).target.digest != target:
                raise NotFound(f"image {identifiers.go_quote(name)} with target {target}")
            store.delete(conn, ns, name)

        await self._db.update(apply)
        self._db.deleted()
        await self._events.publish("/images/delete", events_pb.ImageDelete(name=name))
        if sync:
            await self._gc.schedule_and_wait()
