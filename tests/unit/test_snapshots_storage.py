"""The per-snapshotter metastore (containerd's snapshots/storage tests, plus messages)."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from pycontainerd.snapshots.interface import Info, Kind, Usage
from pycontainerd.snapshots.storage import MetaStore, Snapshot, Transaction


@pytest.fixture
async def ms(tmp_path: Path) -> AsyncIterator[MetaStore]:
    store = await MetaStore.open(tmp_path / "metadata.db")
    yield store
    await store.aclose()


def base_populate(tx: Transaction) -> None:
    """containerd's basePopulate: two committed, three active, two views."""
    tx.create_snapshot(Kind.ACTIVE, "committed-tmp-1")
    tx.commit_active("committed-tmp-1", "committed-1", Usage(size=1))
    tx.create_snapshot(Kind.ACTIVE, "committed-tmp-2", "committed-1")
    tx.commit_active("committed-tmp-2", "committed-2", Usage(size=2))
    tx.create_snapshot(Kind.ACTIVE, "active-1")
    tx.create_snapshot(Kind.ACTIVE, "active-2", "committed-1")
    tx.create_snapshot(Kind.ACTIVE, "active-3", "committed-2")
    tx.create_snapshot(Kind.VIEW, "view-1")
    tx.create_snapshot(Kind.VIEW, "view-2", "committed-2")


BASE_INFO = {
    "committed-1": (Kind.COMMITTED, ""),
    "committed-2": (Kind.COMMITTED, "committed-1"),
    "active-1": (Kind.ACTIVE, ""),
    "active-2": (Kind.ACTIVE, "committed-1"),
    "active-3": (Kind.ACTIVE, "committed-2"),
    "view-1": (Kind.VIEW, ""),
    "view-2": (Kind.VIEW, "committed-2"),
}


def get_info(key: str) -> Callable[[Transaction], tuple[str, Info, Usage]]:
    return lambda tx: tx.get_info(key)


def get_snapshot(key: str) -> Callable[[Transaction], Snapshot]:
    return lambda tx: tx.get_snapshot(key)


def create(kind: Kind, key: str, parent: str = "") -> Callable[[Transaction], Snapshot]:
    return lambda tx: tx.create_snapshot(kind, key, parent)


async def populated(ms: MetaStore) -> None:
    await ms.update(base_populate)


async def test_get_info(ms: MetaStore) -> None:
    before = time.time_ns()
    await populated(ms)
    after = time.time_ns()
    for key, (kind, parent) in BASE_INFO.items():
        _, info, usage = await ms.view(get_info(key))
        assert (info.name, info.kind, info.parent, dict(info.labels)) == (key, kind, parent, {})
        assert before <= info.created_at == info.updated_at <= after
    _, _, usage = await ms.view(lambda tx: tx.get_info("committed-2"))
    assert usage == Usage(size=2)
    _, _, usage = await ms.view(lambda tx: tx.get_info("active-1"))
    assert usage == Usage()


@pytest.mark.parametrize("populate", [True, False], ids=["populated", "empty"])
async def test_get_info_not_exist(ms: MetaStore, populate: bool) -> None:
    if populate:
        await populated(ms)
    with pytest.raises(NotFound) as exc:
        await ms.view(lambda tx: tx.get_info("active-not-exist"))
    assert str(exc.value) == "snapshot does not exist: not found"


async def test_walk_all_in_key_order(ms: MetaStore) -> None:
    await populated(ms)
    walked = await ms.view(lambda tx: tx.walk_info())
    assert [info.name for _, info in walked] == sorted(BASE_INFO)
    assert {info.name: (info.kind, info.parent) for _, info in walked} == BASE_INFO
    ids = await ms.view(lambda tx: tx.id_map())
    assert {ids[sid] for sid, _ in walked} == set(BASE_INFO)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["kind==committed"], {"committed-1", "committed-2"}),
        (["kind==view"], {"view-1", "view-2"}),
        (["parent==committed-2"], {"active-3", "view-2"}),
        (['parent==""'], {"committed-1", "active-1", "view-1"}),
        (["parent"], set(BASE_INFO)),  # present even when empty, as in containerd
        (["name==active-1", "name==view-2"], {"active-1", "view-2"}),
        (["name~=^active-[12]$"], {"active-1", "active-2"}),
        (["labels.a"], {"active-1"}),
        (['labels."x.y"==z'], {"view-1"}),
        (["labels.a!=1"], set(BASE_INFO) - {"active-1"}),
    ],
)
async def test_walk_filters(ms: MetaStore, filters: list[str], expected: set[str]) -> None:
    await populated(ms)

    def label(tx: Transaction) -> None:
        tx.update_info(Info(kind=Kind.ACTIVE, name="active-1", labels={"a": "1"}))
        tx.update_info(Info(kind=Kind.VIEW, name="view-1", labels={"x.y": "z"}))

    await ms.update(label)
    walked = await ms.view(lambda tx: tx.walk_info(filters))
    assert {info.name for _, info in walked} == expected


async def test_walk_bad_filter(ms: MetaStore) -> None:
    with pytest.raises(InvalidArgument):
        await ms.view(lambda tx: tx.walk_info(["name=="]))


async def test_get_snapshot(ms: MetaStore) -> None:
    def populate(tx: Transaction) -> dict[str, Snapshot]:
        tx.create_snapshot(Kind.ACTIVE, "committed-tmp-1")
        tx.commit_active("committed-tmp-1", "committed-1", Usage())
        return {
            key: tx.create_snapshot(kind, key, parent)
            for key, kind, parent in [
                ("active-1", Kind.ACTIVE, ""),
                ("active-2", Kind.ACTIVE, "committed-1"),
                ("view-1", Kind.VIEW, ""),
                ("view-2", Kind.VIEW, "committed-1"),
            ]
        }

    created = await ms.update(populate)
    for key, expected in created.items():
        assert await ms.view(get_snapshot(key)) == expected
    assert created["active-2"].parent_ids == ("1",)
    assert created["active-1"].parent_ids == ()


async def test_get_snapshot_committed(ms: MetaStore) -> None:
    await populated(ms)
    with pytest.raises(FailedPrecondition) as exc:
        await ms.view(lambda tx: tx.get_snapshot("committed-1"))
    assert (
        str(exc.value) == "requested snapshot committed-1 not active or view: failed precondition"
    )


async def test_get_snapshot_not_exist(ms: MetaStore) -> None:
    await populated(ms)
    with pytest.raises(NotFound):
        await ms.view(lambda tx: tx.get_snapshot("active-not-exist"))


async def test_create_active(ms: MetaStore) -> None:
    def run(tx: Transaction) -> None:
        a1 = tx.create_snapshot(Kind.ACTIVE, "active-1")
        assert a1.kind == Kind.ACTIVE
        a2 = tx.create_snapshot(Kind.VIEW, "view-1")
        assert a2.id != a1.id and a2.kind == Kind.VIEW
        commit_id = tx.commit_active("active-1", "committed-1", Usage())
        assert commit_id == a1.id
        a3 = tx.create_snapshot(Kind.ACTIVE, "active-3", "committed-1")
        assert a3.id not in (a1.id, a2.id)
        assert a3.parent_ids == (commit_id,)
        a4 = tx.create_snapshot(Kind.VIEW, "view-2", "committed-1")
        assert a4.id not in (a1.id, a2.id, a3.id)
        assert a4.parent_ids == (commit_id,) and a4.kind == Kind.VIEW

    await ms.update(run)


async def test_create_exist(ms: MetaStore) -> None:
    await populated(ms)
    for key in ("active-1", "committed-1"):
        with pytest.raises(AlreadyExists) as exc:
            await ms.update(create(Kind.ACTIVE, key))
        assert str(exc.value) == f"snapshot {key}: already exists"


async def test_create_parent_not_exist(ms: MetaStore) -> None:
    with pytest.raises(NotFound) as exc:
        await ms.update(lambda tx: tx.create_snapshot(Kind.ACTIVE, "active-1", "does-not-exist"))
    assert str(exc.value) == 'missing parent "does-not-exist" bucket: not found'


async def test_create_from_active(ms: MetaStore) -> None:
    await populated(ms)
    for parent in ("active-1", "view-1"):
        with pytest.raises(InvalidArgument) as exc:
            await ms.update(create(Kind.ACTIVE, "new", parent))
        assert str(exc.value) == f'parent "{parent}" is not committed snapshot: invalid argument'


async def test_create_committed_kind_rejected(ms: MetaStore) -> None:
    with pytest.raises(InvalidArgument) as exc:
        await ms.update(lambda tx: tx.create_snapshot(Kind.COMMITTED, "x"))
    assert str(exc.value) == (
        "snapshot type Committed invalid; only snapshots of type Active or View can be "
        "created: invalid argument"
    )


async def test_validate_create_changes_nothing(ms: MetaStore) -> None:
    await populated(ms)
    parents = await ms.view(lambda tx: tx.validate_create(Kind.ACTIVE, "new", "committed-2"))
    ids = await ms.view(lambda tx: tx.id_map())
    assert [ids[p] for p in parents] == ["committed-2", "committed-1"]
    assert "new" not in ids.values()
    with pytest.raises(AlreadyExists):
        await ms.view(lambda tx: tx.validate_create(Kind.VIEW, "active-1"))


async def test_commit(ms: MetaStore) -> None:
    a1 = await ms.update(lambda tx: tx.create_snapshot(Kind.ACTIVE, "active-1", labels={"a": "1"}))
    before = time.time_ns()
    commit_id = await ms.update(
        lambda tx: tx.commit_active("active-1", "committed-1", Usage(10, 2), {"b": "2"})
    )
    assert commit_id == a1.id
    with pytest.raises(NotFound):
        await ms.view(lambda tx: tx.get_snapshot("active-1"))
    with pytest.raises(FailedPrecondition):
        await ms.view(lambda tx: tx.get_snapshot("committed-1"))
    sid, info, usage = await ms.view(lambda tx: tx.get_info("committed-1"))
    assert sid == a1.id and usage == Usage(size=10, inodes=2)
    assert info.kind == Kind.COMMITTED
    assert dict(info.labels) == {"b": "2"}  # replaced, not inherited
    assert before <= info.created_at == info.updated_at


async def test_commit_exist(ms: MetaStore) -> None:
    await populated(ms)
    with pytest.raises(AlreadyExists) as exc:
        await ms.update(lambda tx: tx.commit_active("active-1", "committed-1", Usage()))
    assert str(exc.value) == "committed snapshot committed-1: already exists"


async def test_commit_not_exist(ms: MetaStore) -> None:
    with pytest.raises(NotFound) as exc:
        await ms.update(lambda tx: tx.commit_active("missing", "committed-1", Usage()))
    assert str(exc.value) == 'failed to get active snapshot "missing": not found'


@pytest.mark.parametrize("key", ["committed-1", "view-1"])
async def test_commit_not_active(ms: MetaStore, key: str) -> None:
    await populated(ms)
    with pytest.raises(FailedPrecondition) as exc:
        await ms.update(lambda tx: tx.commit_active(key, "committed-3", Usage()))
    assert str(exc.value) == f'snapshot "{key}" is not active: failed precondition'


async def test_commit_keeps_children_linked(ms: MetaStore) -> None:
    await populated(ms)
    await ms.update(lambda tx: tx.create_snapshot(Kind.ACTIVE, "top", "committed-2"))
    await ms.update(lambda tx: tx.commit_active("top", "top-committed", Usage()))
    _, info, _ = await ms.view(lambda tx: tx.get_info("top-committed"))
    assert info.parent == "committed-2"
    with pytest.raises(FailedPrecondition):
        await ms.update(lambda tx: tx.remove("committed-2"))


async def test_remove(ms: MetaStore) -> None:
    def run(tx: Transaction) -> None:
        a1 = tx.create_snapshot(Kind.ACTIVE, "active-1")
        commit_id = tx.commit_active("active-1", "committed-1", Usage())
        a2 = tx.create_snapshot(Kind.VIEW, "view-1", "committed-1")
        a3 = tx.create_snapshot(Kind.VIEW, "view-2", "committed-1")
        with pytest.raises(NotFound):
            tx.remove("active-1")
        assert tx.remove("view-2") == (a3.id, Kind.VIEW)
        assert tx.remove("view-1") == (a2.id, Kind.VIEW)
        assert tx.remove("committed-1") == (commit_id, Kind.COMMITTED) == (a1.id, Kind.COMMITTED)

    await ms.update(run)
    assert await ms.view(lambda tx: tx.id_map()) == {}


async def test_remove_with_children(ms: MetaStore) -> None:
    await populated(ms)
    for _ in range(2):
        with pytest.raises(FailedPrecondition) as exc:
            await ms.update(lambda tx: tx.remove("committed-1"))
        assert str(exc.value) == "cannot remove snapshot with child: failed precondition"


async def test_remove_not_exist(ms: MetaStore) -> None:
    with pytest.raises(NotFound) as exc:
        await ms.update(lambda tx: tx.remove("does-not-exist"))
    assert str(exc.value) == "snapshot does-not-exist: not found"


async def test_parents(ms: MetaStore) -> None:
    """Parent chains run from the nearest parent down; a view of a committed snapshot
    has it first, followed by its own chain."""
    await populated(ms)
    expected_depth = {
        "committed-1": 0,
        "committed-2": 1,
        "active-1": 0,
        "active-2": 1,
        "active-3": 2,
        "view-1": 0,
        "view-2": 2,
    }

    def run(tx: Transaction) -> None:
        ids = tx.id_map()
        for name, depth in expected_depth.items():
            sid, info, _ = tx.get_info(name)
            if info.kind == Kind.COMMITTED:
                s = tx.create_snapshot(Kind.VIEW, f"test-{name}", name)
                assert len(s.parent_ids) == depth + 1
                assert s.parent_ids[0] == sid
                chain = s.parent_ids
            else:
                s = tx.get_snapshot(name)
                assert s.id == sid and len(s.parent_ids) == depth
                chain = s.parent_ids
            # Each id's parent is the next id in the chain.
            for child, parent in itertools.pairwise(chain):
                _, child_info, _ = tx.get_info(ids[child])
                assert child_info.parent == ids[parent]

    await ms.update(run)


async def test_update_info(ms: MetaStore) -> None:
    await populated(ms)
    _, old, _ = await ms.view(lambda tx: tx.get_info("active-2"))
    new = await ms.update(
        lambda tx: tx.update_info(
            Info(kind=Kind.VIEW, name="active-2", parent="x", labels={"a": "1", "b": "2"})
        )
    )
    assert (new.kind, new.parent, new.created_at) == (Kind.ACTIVE, "committed-1", old.created_at)
    assert new.updated_at > old.updated_at
    assert dict(new.labels) == {"a": "1", "b": "2"}

    new = await ms.update(
        lambda tx: tx.update_info(
            Info(kind=Kind.ACTIVE, name="active-2", labels={"a": "changed", "c": "3"}),
            ["labels.a", "labels.b"],
        )
    )
    assert dict(new.labels) == {"a": "changed"}  # b absent from info: removed
    new = await ms.update(
        lambda tx: tx.update_info(
            Info(kind=Kind.ACTIVE, name="active-2", labels={"x": "", "y": "1"}), ["labels"]
        )
    )
    assert dict(new.labels) == {"y": "1"}  # empty values are not stored
    _, stored, _ = await ms.view(lambda tx: tx.get_info("active-2"))
    assert stored == new


async def test_update_info_errors(ms: MetaStore) -> None:
    await populated(ms)
    with pytest.raises(InvalidArgument) as exc:
        await ms.update(
            lambda tx: tx.update_info(Info(kind=Kind.ACTIVE, name="active-1"), ["parent"])
        )
    assert str(exc.value) == (
        'cannot update "parent" field on snapshot "active-1": invalid argument'
    )
    with pytest.raises(NotFound):
        await ms.update(lambda tx: tx.update_info(Info(kind=Kind.ACTIVE, name="missing")))


async def test_ids_are_never_reused(ms: MetaStore) -> None:
    first = await ms.update(lambda tx: tx.create_snapshot(Kind.ACTIVE, "a"))
    await ms.update(lambda tx: tx.remove("a"))
    again = await ms.update(lambda tx: tx.create_snapshot(Kind.ACTIVE, "a"))
    assert int(again.id) > int(first.id)


async def test_failed_update_rolls_back_and_runs_undo(ms: MetaStore) -> None:
    undone: list[str] = []

    def run(tx: Transaction) -> None:
        tx.create_snapshot(Kind.ACTIVE, "a")
        tx.on_rollback(lambda: undone.append("first"))
        tx.on_rollback(lambda: undone.append("second"))
        tx.create_snapshot(Kind.ACTIVE, "a")  # AlreadyExists

    with pytest.raises(AlreadyExists):
        await ms.update(run)
    assert undone == ["second", "first"]
    assert await ms.view(lambda tx: tx.id_map()) == {}


async def test_undo_not_run_on_commit(ms: MetaStore) -> None:
    undone: list[str] = []

    def run(tx: Transaction) -> None:
        tx.create_snapshot(Kind.ACTIVE, "a")
        tx.on_rollback(lambda: undone.append("x"))

    await ms.update(run)
    assert undone == []


async def test_view_is_read_only(ms: MetaStore) -> None:
    with pytest.raises(RuntimeError):
        await ms.view(lambda tx: tx.create_snapshot(Kind.ACTIVE, "a"))


async def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    ms = await MetaStore.open(path)
    await ms.update(lambda tx: tx.create_snapshot(Kind.ACTIVE, "a", labels={"k": "v"}))
    await ms.aclose()
    ms = await MetaStore.open(path)
    try:
        _, info, _ = await ms.view(lambda tx: tx.get_info("a"))
        assert dict(info.labels) == {"k": "v"}
        mode = await ms.view(lambda tx: tx._conn.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
    finally:
        await ms.aclose()


async def test_closed_store(tmp_path: Path) -> None:
    ms = await MetaStore.open(tmp_path / "metadata.db")
    await ms.aclose()
    await ms.aclose()
    with pytest.raises(Unavailable):
        await ms.view(lambda tx: tx.id_map())


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer"):
        await MetaStore.open(path)
