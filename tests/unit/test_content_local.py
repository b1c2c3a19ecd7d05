"""The local content store: the conformance suite, plus what only this backend promises."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pycontainerd import digests
from pycontainerd.content import testsuite
from pycontainerd.content.interface import Info, Store
from pycontainerd.content.local import (
    LocalStore,
    format_timestamp,
    go_duration,
    parse_timestamp,
)
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

# Few lock attempts keep the suite's many "ref is locked" checks quick; the back-off
# itself has its own test below.
FAST_LOCKS = 2


@pytest.fixture
async def subject(tmp_path: Path) -> AsyncIterator[testsuite.Subject]:
    stores = [await LocalStore.open(tmp_path, lock_attempts=FAST_LOCKS)]

    async def reopen() -> Store:
        stores.append(await LocalStore.open(tmp_path, lock_attempts=FAST_LOCKS))
        return stores[-1]

    yield testsuite.Subject(stores[0], reopen=reopen, keeps_labels=False)
    for store in stores:
        await store.aclose()


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    await case.run(subject)


async def test_run_all_reports_skips(tmp_path: Path) -> None:
    import contextlib

    counter = iter(range(1000))

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[testsuite.Subject]:
        store = await LocalStore.open(tmp_path / str(next(counter)), lock_attempts=FAST_LOCKS)
        try:
            yield testsuite.Subject(store, keeps_labels=False)
        finally:
            await store.aclose()

    skipped = await testsuite.run_all(factory)
    assert sorted(skipped) == [
        "crash_resume: the store cannot be reopened as after a crash",
        "labels: the store keeps no labels",
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    s = await LocalStore.open(tmp_path / "root", lock_attempts=FAST_LOCKS)
    yield s
    await s.aclose()


def ingest_dir(root: Path, ref: str) -> Path:
    return root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no umask in /proc/self/status")


# --- on-disk layout -----------------------------------------------------------------------


async def test_layout_during_and_after_an_ingest(store: LocalStore) -> None:
    root = store.root
    assert (root / "ingest").is_dir()
    data = b"hello, layout"
    dgst = digests.of(data)
    w = await store.writer("layout/ref", total=len(data), expected=dgst)
    await w.write(data[:5])
    ingest = ingest_dir(root, "layout/ref")
    assert sorted(p.name for p in ingest.iterdir()) == [
        "data",
        "ref",
        "startedat",
        "total",
        "updatedat",
    ]
    assert (ingest / "ref").read_text() == "layout/ref"
    assert (ingest / "data").read_bytes() == data[:5]
    assert (ingest / "total").read_text() == str(len(data))
    started = (ingest / "startedat").read_text()
    assert started.endswith("Z") and "T" in started
    assert parse_timestamp(started) == (await w.status()).started_at
    # Nothing under blobs/ until the commit renames the data there.
    assert not (root / "blobs").exists() or all_files(root / "blobs") == []

    await w.write(data[5:])
    await w.commit(len(data), dgst)
    blob = root / "blobs" / "sha256" / dgst.removeprefix("sha256:")
    assert blob.read_bytes() == data
    mode = stat.S_IMODE(blob.stat().st_mode)
    assert mode & 0o333 == 0
    assert mode == 0o444 & ~umask()
    assert not ingest.exists()
    assert store.blob_path(dgst) == blob


async def test_total_recorded_only_when_known(store: LocalStore) -> None:
    w = await store.writer("no-total")
    await w.close()
    assert not (ingest_dir(store.root, "no-total") / "total").exists()
    assert (await store.status("no-total")).total == 0


async def test_close_records_updatedat(store: LocalStore) -> None:
    w = await store.writer("updated")
    before = (ingest_dir(store.root, "updated") / "updatedat").read_text()
    await w.write(b"abc")
    updated = (await w.status()).updated_at
    await w.close()
    after = (ingest_dir(store.root, "updated") / "updatedat").read_text()
    assert parse_timestamp(after) == updated
    assert parse_timestamp(after) >= parse_timestamp(before)
    assert not list(ingest_dir(store.root, "updated").glob("*.tmp"))


async def test_no_blob_visible_during_a_large_ingest(store: LocalStore) -> None:
    data = os.urandom(4 << 20)
    dgst = digests.of(data)
    w = await store.writer("big", total=len(data), expected=dgst)
    for i in range(0, len(data), 1 << 20):
        await w.write(data[i : i + (1 << 20)])
        assert not list((store.root).glob("blobs/**/*[0-9a-f]"))
        with pytest.raises(NotFound):
            await store.info(dgst)
    await w.commit(len(data), dgst)
    assert (await store.info(dgst)).size == len(data)


# --- refs and digests are never paths -----------------------------------------------------

WEIRD_REFS = [
    "a/b/c",
    "..",
    "../../../../etc/passwd",
    "/absolute/path",
    "./.",
    "with space and\ttab\nnewline",
    "ünïcødé-ref-✓",
    "x" * 10_000,
    "\\windows\\style",
    "nul\x00inside",
    "ingest",
    "blobs/sha256/" + "0" * 64,
]


async def test_weird_refs_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = await LocalStore.open(root, lock_attempts=FAST_LOCKS)
    try:
        for i, ref in enumerate(WEIRD_REFS):
            w = await store.writer(ref, total=100)
            await w.write(bytes([i]) * (i + 1))
            await w.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
        assert sorted(p.name for p in root.iterdir()) == ["ingest"]
        names = sorted(p.name for p in (root / "ingest").iterdir())
        assert names == sorted(hashlib.sha256(r.encode()).hexdigest() for r in WEIRD_REFS)
        assert all(p.is_dir() for p in (root / "ingest").iterdir())
        listed = await store.list_statuses()
        assert sorted(s.ref for s in listed) == sorted(WEIRD_REFS)
        for i, ref in enumerate(WEIRD_REFS):
            st = await store.status(ref)
            assert (st.ref, st.offset) == (ref, i + 1)
        for ref in WEIRD_REFS:
            await store.abort(ref)
        assert list((root / "ingest").iterdir()) == []
    finally:
        await store.aclose()


async def test_ref_that_is_not_utf8_is_refused(store: LocalStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.writer("lone \udc80 surrogate")


BAD_DIGESTS = [
    "",
    "sha256",
    "sha256:",
    "sha256:../../../etc/passwd",
    "sha256:" + "0" * 63,
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63 + "/",
    "../sha256:" + "0" * 64,
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "sha512:" + "0" * 64,
    "SHA256:" + "0" * 64,
]


@pytest.mark.parametrize("dgst", BAD_DIGESTS)
async def test_invalid_digests(store: LocalStore, dgst: str) -> None:
    with pytest.raises(InvalidArgument):
        await store.info(dgst)
    with pytest.raises(InvalidArgument):
        await store.delete(dgst)
    with pytest.raises(InvalidArgument):
        await store.reader_at(dgst)
    if dgst:
        with pytest.raises(InvalidArgument):
            await store.writer("ref", expected=dgst)
        w = await store.writer("ref")
        with pytest.raises(InvalidArgument):
            await w.commit(0, dgst)
        # The refused commit closed the writer and released the ref.
        w = await store.writer("ref")
        await w.close()
    assert not (store.root / "blobs").exists()


# --- errors and their messages ------------------------------------------------------------


async def test_error_messages(store: LocalStore) -> None:
    data = b"message"
    dgst = digests.of(data)
    with pytest.raises(NotFound, match=f"^content {dgst}: not found$"):
        await store.info(dgst)
    with pytest.raises(NotFound, match=r'^ingest ref "nope": not found$'):
        await store.abort("nope")
    with pytest.raises(NotFound, match=r'^ingest ref "nope": not found$'):
        await store.status("nope")
    with pytest.raises(InvalidArgument, match=r"^ref must not be empty: invalid argument$"):
        await store.writer("")
    w = await store.writer("msg")
    with pytest.raises(Unavailable, match=r"^ref msg locked for \S+ \(since \S+Z\): unavailable$"):
        await store.writer("msg")
    await w.write(data)
    with pytest.raises(
        FailedPrecondition, match=r"^unexpected commit size 7, expected 8: failed precondition$"
    ):
        await w.commit(8, "")
    w = await store.writer("msg")
    with pytest.raises(
        FailedPrecondition,
        match=f"^unexpected commit digest {dgst}, expected {digests.of(b'x')}: ",
    ):
        await w.commit(7, digests.of(b"x"))
    w = await store.writer("msg")
    await w.commit(7, dgst)
    with pytest.raises(AlreadyExists, match=f"^content {dgst}: already exists$"):
        await store.writer("other", expected=dgst)
    with pytest.raises(FailedPrecondition, match=r"^update not supported on immutable content"):
        await store.update(Info(dgst, 7, labels={"a": "b"}))


async def test_labels_are_ignored(store: LocalStore) -> None:
    w = await store.writer("labelled")
    await w.write(b"x")
    await w.commit(1, "", {"containerd.io/gc.root": "now"})
    info = await store.info(digests.of(b"x"))
    assert info.labels == {}
    assert info.created_at == info.updated_at
    assert [i.labels for i in [x async for x in store.walk()]] == [{}]


async def test_negative_total_is_refused(store: LocalStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.writer("neg", total=-1)


async def test_closed_writer_refuses_everything(store: LocalStore) -> None:
    w = await store.writer("closed")
    await w.close()
    await w.close()  # idempotent
    with pytest.raises(FailedPrecondition):
        await w.write(b"x")
    with pytest.raises(FailedPrecondition):
        await w.truncate(0)
    with pytest.raises(FailedPrecondition, match="closed"):
        await w.commit(0, "")
    # ...and never releases a ref that another writer now holds.
    w2 = await store.writer("closed")
    with pytest.raises(FailedPrecondition):
        await w.commit(0, "")
    with pytest.raises(Unavailable):
        await store.writer("closed")
    await w2.close()


# --- resume semantics (containerd's) ------------------------------------------------------


async def test_resume_with_another_total_starts_again(store: LocalStore) -> None:
    w = await store.writer("tot", total=10)
    await w.write(b"12345")
    await w.close()
    w = await store.writer("tot", total=20)
    st = await w.status()
    assert (st.offset, st.total) == (0, 20)
    assert w.digest() == testsuite.EMPTY_DIGEST
    await w.close()
    assert (ingest_dir(store.root, "tot") / "data").read_bytes() == b""
    assert (await store.status("tot")).total == 20


async def test_resume_without_total_keeps_the_recorded_one(store: LocalStore) -> None:
    w = await store.writer("tot", total=10)
    await w.write(b"12345")
    await w.close()
    w = await store.writer("tot")
    assert ((await w.status()).offset, (await w.status()).total) == (5, 10)
    await w.close()


async def test_resume_records_a_total_given_late(store: LocalStore) -> None:
    w = await store.writer("late")
    await w.write(b"12345")
    await w.close()
    w = await store.writer("late", total=10)
    st = await w.status()
    assert (st.offset, st.total) == (5, 10)
    await w.close()
    assert (await store.status("late")).total == 10


async def test_resume_of_a_corrupt_ingest_starts_again(store: LocalStore) -> None:
    w = await store.writer("corrupt")
    await w.write(b"12345")
    await w.close()
    (ingest_dir(store.root, "corrupt") / "startedat").write_text("yesterday")
    with pytest.raises(FailedPrecondition, match="could not read startedat"):
        await store.status("corrupt")
    assert await store.list_statuses() == []
    w = await store.writer("corrupt")
    assert (await w.status()).offset == 0
    await w.close()
    assert (await store.status("corrupt")).offset == 0


async def test_ingest_without_data_is_invisible_and_restarted(store: LocalStore) -> None:
    # A crash after the rename into blobs/ and before the ingest was removed.
    w = await store.writer("half")
    await w.write(b"abc")
    await w.close()
    (ingest_dir(store.root, "half") / "data").unlink()
    with pytest.raises(NotFound):
        await store.status("half")
    assert await store.list_statuses() == []
    w = await store.writer("half")
    await w.write(b"xyz")
    await w.commit(3, digests.of(b"xyz"))


async def test_read_only_ingest_data_is_resumable(store: LocalStore) -> None:
    # A crash after the data was made read-only and before its rename.
    w = await store.writer("ro")
    await w.write(b"abc")
    await w.close()
    (ingest_dir(store.root, "ro") / "data").chmod(0o444)
    w = await store.writer("ro")
    assert (await w.status()).offset == 3
    await w.write(b"def")
    await w.commit(6, digests.of(b"abcdef"))


async def test_resume_of_an_ingest_written_by_containerd(store: LocalStore) -> None:
    ref = "default/1/layer-sha256:abc"
    ingest = ingest_dir(store.root, ref)
    ingest.mkdir()
    (ingest / "ref").write_text(ref)
    (ingest / "data").write_bytes(b"0123456789")
    os.utime(ingest / "data", ns=(0, 0))
    (ingest / "startedat").write_text("2023-10-05T14:03:07.12345+02:00")
    (ingest / "updatedat").write_text("2023-10-05T14:03:08+02:00")
    (ingest / "total").write_text("20")
    st = await store.status(ref)
    assert st.ref == ref and st.offset == 10 and st.total == 20
    assert st.started_at == 1696507387_123450000
    assert st.updated_at == 1696507388_000000000
    w = await store.writer(ref, total=20)
    assert w.digest() == digests.of(b"0123456789")
    await w.write(b"abcdefghij")
    await w.commit(20, digests.of(b"0123456789abcdefghij"))


async def test_status_of_a_dir_whose_ref_differs(store: LocalStore) -> None:
    w = await store.writer("real")
    await w.close()
    os.rename(ingest_dir(store.root, "real"), ingest_dir(store.root, "alias"))
    with pytest.raises(NotFound):
        await store.status("alias")
    with pytest.raises(NotFound):
        await store.status("real")
    assert await store.list_statuses() == []


# --- commit -------------------------------------------------------------------------------


async def test_commit_of_content_committed_meanwhile(store: LocalStore) -> None:
    data = b"twice"
    w1 = await store.writer("one")
    w2 = await store.writer("two")
    await w1.write(data)
    await w2.write(data)
    await w1.commit(5, "")
    with pytest.raises(AlreadyExists):
        await w2.commit(5, "")
    assert w2.digest() == digests.of(data)
    with pytest.raises(NotFound):
        await store.status("two")
    assert not ingest_dir(store.root, "two").exists()


async def test_commit_in_another_algorithm_rehashes(store: LocalStore) -> None:
    data = b"sha512 please"
    w = await store.writer("rehash")
    await w.write(data)
    assert w.digest() == digests.of(data)
    await w.commit(0, digests.of(data, "sha512"))
    assert w.digest() == digests.of(data, "sha512")
    blob = store.root / "blobs" / "sha512" / digests.of(data, "sha512").split(":")[1]
    assert blob.read_bytes() == data


async def test_writer_hashes_with_the_expected_algorithm(store: LocalStore) -> None:
    data = b"sha384 from the start"
    dgst = digests.of(data, "sha384")
    w = await store.writer("alg", expected=dgst)
    assert w.digest() == digests.of(b"", "sha384")
    await w.write(data)
    await w.close()
    w = await store.writer("alg", expected=dgst)
    assert w.digest() == dgst  # the resume re-hashes with the same algorithm
    await w.commit(0, "")
    assert (await store.info(dgst)).size == len(data)


async def test_abort_under_an_open_writer(store: LocalStore) -> None:
    w = await store.writer("busy")
    await w.write(b"abc")
    await store.abort("busy")
    with pytest.raises(NotFound):
        await store.status("busy")
    with pytest.raises(Unavailable):
        await store.writer("busy")  # the writer still holds the ref
    await w.write(b"def")
    with pytest.raises(NotFound):
        await w.commit(0, "")
    assert not (store.root / "blobs" / "sha256").exists() or not any(
        (store.root / "blobs" / "sha256").iterdir()
    )
    w = await store.writer("busy")
    assert (await w.status()).offset == 0
    await w.close()


async def test_close_after_abort(store: LocalStore) -> None:
    w = await store.writer("gone")
    await store.abort("gone")
    await w.close()
    assert not ingest_dir(store.root, "gone").exists()


# --- walk ---------------------------------------------------------------------------------


async def test_walk_skips_junk(store: LocalStore) -> None:
    data = b"walk me"
    dgst = digests.of(data)
    w = await store.writer("walk")
    await w.write(data)
    await w.commit(0, "")
    sha = store.root / "blobs" / "sha256"
    (sha / "not-a-digest").write_text("junk")
    (sha / (dgst.split(":")[1] + ".tmp")).write_text("junk")
    (sha / ("0" * 64)).mkdir()
    (store.root / "blobs" / "md5").mkdir()
    (store.root / "blobs" / "md5" / "d41d8cd98f00b204e9800998ecf8427e").write_text("")
    (store.root / "blobs" / "README").write_text("junk")
    infos = [i async for i in store.walk()]
    assert [(i.digest, i.size) for i in infos] == [(dgst, len(data))]
    with pytest.raises(NotFound):
        await store.info("sha256:" + "0" * 64)


async def test_walk_filters_by_size(store: LocalStore) -> None:
    for data in (b"a", b"bb", b"ccc"):
        w = await store.writer(data.decode())
        await w.write(data)
        await w.commit(0, "")
    got = [i.digest async for i in store.walk(["size==2"])]
    assert got == [digests.of(b"bb")]
    got = sorted([i.digest async for i in store.walk(["size==1", "size==3"])])
    assert got == sorted([digests.of(b"a"), digests.of(b"ccc")])


# --- readers ------------------------------------------------------------------------------


async def test_reader_outlives_delete_and_close_is_final(store: LocalStore) -> None:
    w = await store.writer("r")
    await w.write(b"still here")
    await w.commit(0, "")
    dgst = digests.of(b"still here")
    reader = await store.reader_at(dgst)
    await store.delete(dgst)
    assert await reader.read_at(6, 100) == b"here"
    await reader.aclose()
    await reader.aclose()
    with pytest.raises(FailedPrecondition):
        await reader.read_at(0, 1)


async def test_huge_read_is_clamped(store: LocalStore) -> None:
    w = await store.writer("r")
    await w.write(b"small")
    await w.commit(0, "")
    reader = await store.reader_at(digests.of(b"small"))
    try:
        assert await reader.read_at(0, 1 << 62) == b"small"
    finally:
        await reader.aclose()


# --- locks, cancellation and descriptors --------------------------------------------------


async def test_lock_waits_for_a_writer_that_is_closing(tmp_path: Path) -> None:
    store = await LocalStore.open(tmp_path)  # containerd's 10 attempts
    try:
        w = await store.writer("wait")

        async def close_soon() -> None:
            await asyncio.sleep(0.005)
            await w.close()

        closer = asyncio.create_task(close_soon())
        w2 = await store.writer("wait")
        await closer
        await w2.close()
    finally:
        await store.aclose()


async def test_locks_are_per_store_instance(tmp_path: Path) -> None:
    a = await LocalStore.open(tmp_path, lock_attempts=1)
    b = await LocalStore.open(tmp_path, lock_attempts=1)
    wa = await a.writer("shared")
    with pytest.raises(Unavailable):
        await a.writer("shared")
    wb = await b.writer("shared")  # as a restarted daemon would
    await wb.close()
    await wa.close()
    await a.aclose()
    await b.aclose()


async def test_cancelled_writer_open_releases_the_ref(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    release = threading.Event()
    original = store._open_writer

    def slow_open(*args: object, **kwargs: object) -> object:
        started.set()
        release.wait(5)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_open_writer", slow_open)
    task = asyncio.create_task(store.writer("cancelled", total=3))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    monkeypatch.undo()
    for _ in range(200):
        try:
            w = await store.writer("cancelled")
            break
        except Unavailable:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the ref stayed locked after the opener was cancelled")
    assert (await w.status()).total == 3
    await w.close()


async def test_cancelled_write_leaves_a_consistent_writer(store: LocalStore) -> None:
    w = await store.writer("cancel-write")
    data = os.urandom(8 << 20)
    task = asyncio.create_task(w.write(data))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.write(b"tail")  # waits for the cancelled write's thread to finish
    on_disk = (ingest_dir(store.root, "cancel-write") / "data").read_bytes()
    st = await w.status()
    assert st.offset == len(on_disk)
    assert w.digest() == digests.of(on_disk)
    await w.commit(len(on_disk), digests.of(on_disk))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_aclose_releases_descriptors_of_open_writers(tmp_path: Path) -> None:
    store = await LocalStore.open(tmp_path)
    before = open_fds()
    writers = [await store.writer(f"fd-{i}") for i in range(5)]
    for w in writers:
        await w.write(b"x")
    assert open_fds() >= before + 5
    await store.aclose()
    assert open_fds() <= before
    # The ingests were left as a crash would leave them, ready for a resume.
    again = await LocalStore.open(tmp_path)
    w = await again.writer("fd-0")
    assert (await w.status()).offset == 1
    await w.close()
    await again.aclose()


async def test_dropped_reader_and_writer_close_their_descriptors(store: LocalStore) -> None:
    w = await store.writer("drop")
    await w.write(b"abc")
    await w.commit(0, "")
    # Earlier tests' garbage may still hold descriptors; collect it before counting.
    gc.collect()
    before = open_fds()
    reader = await store.reader_at(digests.of(b"abc"))
    w = await store.writer("drop2")
    assert open_fds() == before + 2
    del reader, w
    # The asyncio futures that carried them linger until the loop turns and gc runs.
    await asyncio.sleep(0)
    gc.collect()
    assert open_fds() == before


async def test_read_blob_keeps_few_descriptors_and_drops_them(store: LocalStore) -> None:
    blobs = []
    for i in range(20):
        data = f"blob {i}".encode()
        w = await store.writer(f"many-{i}")
        await w.write(data)
        await w.commit(0, "")
        blobs.append((data, digests.of(data)))
    gc.collect()
    before = open_fds()
    for data, dgst in blobs:
        assert await store.read_blob(dgst, 0, 100) == data
        assert await store.read_blob(dgst, 5, 100) == data[5:]
    kept = open_fds() - before
    assert 0 < kept <= 16
    # A delete drops the blob's descriptor, so the bytes are not readable after it.
    data, dgst = blobs[-1]
    await store.delete(dgst)
    assert open_fds() == before + kept - 1
    with pytest.raises(NotFound):
        await store.read_blob(dgst, 0, 1)
    await store.aclose()
    assert open_fds() == before


async def test_read_blob_of_bytes_not_in_the_page_cache(store: LocalStore) -> None:
    data = os.urandom(1 << 20)
    w = await store.writer("cold")
    await w.write(data)
    await w.commit(0, "")
    dgst = digests.of(data)
    assert await store.read_blob(dgst, 0, 10) == data[:10]
    # Evict the blob from the page cache: the non-blocking read then falls back to a
    # worker thread and still returns every byte.
    fd = os.open(store.blob_path(dgst), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert await store.read_blob(dgst, 4096, 1 << 20) == data[4096:]


async def test_cancelled_read_blob_closes_its_descriptor(store: LocalStore) -> None:
    w = await store.writer("cancel-read")
    await w.write(b"abc")
    await w.commit(0, "")
    gc.collect()
    before = open_fds()
    release = threading.Event()
    started = threading.Event()
    opened: list[int] = []
    closed = asyncio.Event()
    real_open, real_close = os.open, os.close

    def slow_open(path: object, flags: int, *args: int) -> int:
        started.set()
        release.wait(5)
        opened.append(real_open(path, flags, *args))  # type: ignore[arg-type]
        return opened[-1]

    def tracking_close(fd: int) -> None:
        real_close(fd)
        if fd in opened:
            closed.set()  # only ever called on the event loop thread here

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", slow_open)
        mp.setattr(os, "close", tracking_close)
        task = asyncio.create_task(store.read_blob(digests.of(b"abc"), 0, 3))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The orphaned open finishes in its thread; its descriptor is then closed.
        await asyncio.wait_for(closed.wait(), 5)
    assert open_fds() == before


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_696_507_387_123_450_000, "2023-10-05T12:03:07.12345Z"),
        (1_696_507_387_000_000_001, "2023-10-05T12:03:07.000000001Z"),
        (1_696_507_387_000_000_000, "2023-10-05T12:03:07Z"),
    ],
)
def test_timestamps_as_go_writes_them(ns: int, text: str) -> None:
    assert format_timestamp(ns) == text
    assert parse_timestamp(text) == ns


def test_timestamps_read_with_offsets_and_zero() -> None:
    assert parse_timestamp("2023-10-05T14:03:07.5+02:00") == 1_696_507_387_500_000_000
    assert parse_timestamp("2023-10-05T07:03:07-05:00\n") == 1_696_507_387_000_000_000
    assert parse_timestamp("0001-01-01T00:00:00Z") == 0
    assert parse_timestamp("") == 0
    for bad in ("yesterday", "2023-10-05 12:03:07Z", "2023-10-05T12:03:07.1234567891Z"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (1_234_567, "1.234567ms"),
        (2_000_000_000, "2s"),
        (61_500_000_000, "1m1.5s"),
        (3_600_000_000_000, "1h0m0s"),
        (-1_500, "-1.5µs"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text
