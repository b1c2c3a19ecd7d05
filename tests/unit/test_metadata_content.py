"""The namespaced content store passes the content conformance suite, and keeps
namespaces apart."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycontainerd import namespaces
from pycontainerd.content import testsuite
from pycontainerd.content.interface import Info, Store
from pycontainerd.content.local import LocalStore
from pycontainerd.errdefs import AlreadyExists, NotFound
from pycontainerd.metadata.content import ContentStore
from pycontainerd.metadata.db import DB


@pytest.fixture
async def subject(tmp_path: Path) -> AsyncIterator[testsuite.Subject]:
    opened: list[tuple[DB, LocalStore]] = []

    async def make() -> ContentStore:
        db = await DB.open(tmp_path / "meta.db")
        backend = await LocalStore.open(tmp_path / "content", lock_attempts=2)
        opened.append((db, backend))
        return ContentStore(db, backend)

    async def reopen() -> Store:
        return await make()

    with namespaces.with_namespace("suite"):
        yield testsuite.Subject(await make(), reopen=reopen, keeps_labels=True)
    for db, backend in opened:
        await backend.aclose()
        await db.aclose()


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    with namespaces.with_namespace("suite"):
        await case.run(subject)


async def _write(store: ContentStore, data: bytes, ref: str) -> str:
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    w = await store.writer(ref, len(data), dgst)
    await w.write(data)
    await w.commit(len(data), dgst)
    return dgst


@pytest.mark.parametrize("shared", [True, False])
async def test_namespaces_are_separate_and_sharing_policy(tmp_path: Path, shared: bool) -> None:
    db = await DB.open(tmp_path / "meta.db")
    backend = await LocalStore.open(tmp_path / "content")
    store = ContentStore(db, backend, shared=shared)
    try:
        data = b"x" * 1000
        with namespaces.with_namespace("a"):
            dgst = await _write(store, data, "ref")
            with pytest.raises(AlreadyExists):
                await store.writer("again", len(data), dgst)
        with namespaces.with_namespace("b"):
            with pytest.raises(NotFound):
                await store.info(dgst)
            w = await store.writer("ref", len(data), dgst)
            st = await w.status()
            assert st.offset == (len(data) if shared else 0)
            if not shared:
                await w.write(data)
            await w.commit(len(data), dgst)
            assert (await store.info(dgst)).size == len(data)
            await store.delete(dgst)
            with pytest.raises(NotFound):
                await store.info(dgst)
        with namespaces.with_namespace("a"):
            assert (await store.info(dgst)).size == len(data)
    finally:
        await backend.aclose()
        await db.aclose()


async def test_info_seen_by_read_is_never_stale(tmp_path: Path) -> None:
    """Blob records are cached for small reads; any database change drops them, even
    one made by another writer of the database (the collector)."""
    db = await DB.open(tmp_path / "meta.db")
    backend = await LocalStore.open(tmp_path / "content")
    store = ContentStore(db, backend)
    try:
        with namespaces.with_namespace("a"):
            data = b"cached" * 100
            dgst = await _write(store, data, "ref")
            assert await store.read_blob(dgst, 0, 6) == b"cached"
            await store.update(Info(dgst, 0, labels={"k": "v"}), ["labels.k"])
            assert (await store.info(dgst)).labels == {"k": "v"}
            # A caller changing the returned labels does not change the record.
            (await store.info(dgst)).labels["k"] = "changed"
            assert (await store.info(dgst)).labels == {"k": "v"}
            await db.update(
                lambda conn: conn.execute(
                    "DELETE FROM blobs WHERE namespace = ? AND digest = ?", ("a", dgst)
                )
            )
            with pytest.raises(NotFound):
                await store.info(dgst)
            with pytest.raises(NotFound):
                await store.read_blob(dgst, 0, 6)
    finally:
        await backend.aclose()
        await db.aclose()
