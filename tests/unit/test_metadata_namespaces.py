import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from pycontainerd.metadata import db as dbmod
from pycontainerd.metadata import namespaces as store
from pycontainerd.metadata.db import DB


async def test_create_get_list_delete(tmp_path: Path) -> None:
    db = await DB.open(tmp_path / "meta.db")
    try:
        await db.update(lambda c: store.create(c, "b", {"x": "1"}))
        await db.update(lambda c: store.create(c, "a", {}))
        got = await db.view(store.list_all)
        assert [(n.name, n.labels) for n in got] == [("a", {}), ("b", {"x": "1"})]
        with pytest.raises(AlreadyExists, match='namespace "a": already exists'):
            await db.update(lambda c: store.create(c, "a", {}))
        with pytest.raises(InvalidArgument):
            await db.update(lambda c: store.create(c, "bad name", {}))
        await db.update(lambda c: store.set_label(c, "b", "y", "2"))
        await db.update(lambda c: store.set_label(c, "b", "x", ""))
        assert (await db.view(lambda c: store.get(c, "b"))).labels == {"y": "2"}
        await db.update(lambda c: store.delete(c, "b"))
        with pytest.raises(NotFound, match='namespace "b": not found'):
            await db.update(lambda c: store.delete(c, "b"))
    finally:
        await db.aclose()


async def test_failed_update_rolls_back(tmp_path: Path) -> None:
    db = await DB.open(tmp_path / "meta.db")
    try:

        def half(conn: sqlite3.Connection) -> None:
            store.create(conn, "x", {})
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.update(half)
        assert await db.view(store.list_all) == []
    finally:
        await db.aclose()


async def test_persists_and_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    db = await DB.open(path)
    await db.update(lambda c: store.create(c, "keep", {"a": "b"}))
    await db.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == dbmod.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer than this pycontainerd"):
        await DB.open(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION}")
    conn.commit()
    conn.close()
    db = await DB.open(path)
    try:
        assert (await db.view(lambda c: store.get(c, "keep"))).labels == {"a": "b"}
    finally:
        await db.aclose()


async def test_point_lookups_run_inline_only_while_the_connection_is_free(
    tmp_path: Path,
) -> None:
    """A point view runs on the event loop's thread when nobody holds the connection,
    and waits its turn on the database thread while an update holds it."""
    db = await DB.open(tmp_path / "meta.db")
    try:
        await db.update(lambda conn: store.create(conn, "a", {}))
        loop_thread = threading.get_ident()
        seen: list[int] = []

        def lookup(conn: Any) -> Any:
            seen.append(threading.get_ident())
            return store.get(conn, "a")

        assert (await db.view(lookup, point=True)).name == "a"
        assert seen == [loop_thread]
        await db.view(lookup)  # not a point lookup: the database thread
        assert seen[-1] != loop_thread

        entered, release = threading.Event(), threading.Event()

        def slow_update(conn: Any) -> None:
            entered.set()
            release.wait(10)
            store.create(conn, "b", {})

        update = asyncio.ensure_future(db.update(slow_update))
        await asyncio.to_thread(entered.wait, 10)
        point = asyncio.ensure_future(db.view(lookup, point=True))
        await asyncio.sleep(0)
        assert not point.done()  # queued behind the update, not run beside it
        release.set()
        await update
        assert (await point).name == "a"
        assert seen[-1] != loop_thread
    finally:
        await db.aclose()
