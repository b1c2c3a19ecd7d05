"""The content store conformance suite (containerd's ``content/testsuite``, in Python).

Every ``content.interface.Store`` implementation runs it: the local backend, the
namespaced metadata store, proxies. Each case is an async function of a ``Subject``
(a fresh, empty store plus what the implementation can do), collected in ``CASES``.

With pytest::

    @pytest.fixture
    async def subject(tmp_path):
        store = await LocalStore.open(tmp_path)
        yield testsuite.Subject(store, keeps_labels=False)
        await store.aclose()

    @pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
    async def test_conformance(case: testsuite.Case, subject: testsuite.Subject) -> None:
        if reason := case.unsupported(subject):
            pytest.skip(reason)
        await case.run(subject)

Without pytest, ``run_all(factory)`` runs every case on a fresh subject. A case fails
by raising ``SuiteFailure`` (an ``AssertionError``) or the store's own error. Cases
check error kinds, not messages, since a wrapping store words its own. Cases run
in the caller's context, so a namespaced store's caller sets the namespace around
``case.run``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from typing import Any

from pycontainerd import digests
from pycontainerd.content.interface import Info, Status, Store, Writer
from pycontainerd.errdefs import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class SuiteFailure(AssertionError):
    """A store did not behave as the content store contract says."""


@dataclass(frozen=True, slots=True)
class Subject:
    """A fresh, empty store under test and what it supports.

    Attributes:
        store: the store; every case starts from no blobs and no ingests.
        reopen: returns a new store over the same state as after a crash of this
            process: writers of the old store were neither closed nor committed, and
            their refs are not locked in the new store. The old store is not used
            again by the case (the factory cleans both up). None: crash cases skip.
        keeps_labels: the store records commit labels and supports ``update``. When
            False, ``Info.labels`` must be empty and the label cases skip.
    """

    store: Store
    reopen: Callable[[], Awaitable[Store]] | None = None
    keeps_labels: bool = True


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    run: Callable[[Subject], Awaitable[None]]
    needs_reopen: bool = False
    needs_labels: bool = False

    def unsupported(self, subject: Subject) -> str | None:
        """Why ``subject`` cannot run this case, or None when it can."""
        if self.needs_reopen and subject.reopen is None:
            return f"{self.name}: the store cannot be reopened as after a crash"
        if self.needs_labels and not subject.keeps_labels:
            return f"{self.name}: the store keeps no labels"
        return None


CASES: list[Case] = []


def _case(
    *, needs_reopen: bool = False, needs_labels: bool = False
) -> Callable[[Callable[[Subject], Awaitable[None]]], Callable[[Subject], Awaitable[None]]]:
    def register(fn: Callable[[Subject], Awaitable[None]]) -> Callable[[Subject], Awaitable[None]]:
        name = fn.__name__.removeprefix("check_")
        CASES.append(Case(name, fn, needs_reopen=needs_reopen, needs_labels=needs_labels))
        return fn

    return register


async def run_all(
    factory: Callable[[], AbstractAsyncContextManager[Subject]],
) -> list[str]:
    """Run every case, each on a fresh subject from ``factory``.

    Returns:
        The skip reasons of the cases the subjects do not support.

    Raises:
        SuiteFailure: the first failing case (its name leads the message); a store
            error raised by a case propagates with the case named in a note.
    """
    skipped: list[str] = []
    for case in CASES:
        async with factory() as subject:
            reason = case.unsupported(subject)
            if reason is not None:
                skipped.append(reason)
                continue
            try:
                await case.run(subject)
            except SuiteFailure as exc:
                raise SuiteFailure(f"{case.name}: {exc}") from exc
            except Exception as exc:
                exc.add_note(f"in content testsuite case {case.name}")
                raise
    return skipped


# --- helpers ------------------------------------------------------------------------------

_seeds = itertools.count(1)
_LABELS = {"containerd.io/gc.root": "2017-11-14T21:43:22Z"}


def create_content(size: int) -> tuple[bytes, str]:
    """``size`` pseudo-random bytes (different on every call, the same between runs)."""
    data = random.Random(next(_seeds)).randbytes(size)
    return data, digests.of(data)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SuiteFailure(message)


def _eq(actual: object, expected: object, what: str) -> None:
    _check(actual == expected, f"unexpected {what} {actual!r}, expected {expected!r}")


def _within(value: int, lo: int, hi: int, what: str) -> None:
    _check(lo <= value <= hi, f"unexpected {what} {value}, expected between {lo} and {hi}")


async def _raises(kind: type[ContainerdError], aw: Awaitable[Any], what: str) -> ContainerdError:
    try:
        await aw
    except kind as exc:
        return exc
    except ContainerdError as exc:
        raise SuiteFailure(f"{what}: expected {kind.__name__}, got {exc!r}") from exc
    raise SuiteFailure(f"{what}: expected {kind.__name__}, got no error")


async def _write_chunks(w: Writer, data: bytes, chunk: int) -> None:
    for i in range(0, len(data), chunk):
        await w.write(data[i : i + chunk])


async def _write_blob(
    store: Store, ref: str, data: bytes, dgst: str, labels: Mapping[str, str] | None = None
) -> None:
    """containerd's ``content.WriteBlob``: an existing blob counts as written."""
    try:
        w = await store.writer(ref, len(data), dgst)
    except AlreadyExists:
        return
    try:
        st = await w.status()
        if st.offset > len(data):
            await w.truncate(0)
            st = await w.status()
        await w.write(data[st.offset :])
        with suppress(AlreadyExists):
            await w.commit(len(data), dgst, labels)
    finally:
        await w.close()


async def _read_all(store: Store, dgst: str) -> bytes:
    reader = await store.reader_at(dgst)
    try:
        parts = []
        offset = 0
        while offset < reader.size:
            chunk = await reader.read_at(offset, 1 << 20)
            _check(bool(chunk), f"short read of {dgst} at {offset} of {reader.size}")
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)
    finally:
        await reader.aclose()


async def _check_status(
    w: Writer,
    expected: Status,
    dgst: str,
    started: tuple[int, int],
    updated: tuple[int, int],
) -> None:
    st = await w.status()
    _eq(w.digest(), dgst, "writer digest")
    _eq(st.ref, expected.ref, "status ref")
    _eq(st.offset, expected.offset, "status offset")
    _eq(st.total, expected.total, "status total")
    _within(st.started_at, *started, "status started_at")
    _within(st.updated_at, *updated, "status updated_at")


async def _check_info(
    subject: Subject,
    dgst: str,
    size: int,
    labels: Mapping[str, str],
    created: tuple[int, int],
    updated: tuple[int, int],
    store: Store | None = None,
) -> Info:
    info = await (store or subject.store).info(dgst)
    _eq(info.digest, dgst, "info digest")
    _eq(info.size, size, "info size")
    _within(info.created_at, *created, "info created_at")
    _within(info.updated_at, *updated, "info updated_at")
    _eq(dict(info.labels), dict(labels) if subject.keeps_labels else {}, "info labels")
    return info


async def _check_ref_unavailable(store: Store, ref: str) -> None:
    # Only the kind is checked: a wrapping store may name its backend's ref instead.
    await _raises(Unavailable, store.writer(ref), f"second writer on {ref!r}")


def _now() -> int:
    return time.time_ns()


# --- cases ported from containerd's testsuite ---------------------------------------------


@_case()
async def check_writer(subject: Subject) -> None:
    """Writers with no descriptor, a total, an expected digest and both."""
    cs = subject.store
    blobs = [create_content(256) for _ in range(4)]
    writers = [
        await cs.writer("c1"),
        await cs.writer("c2", total=256),
        await cs.writer("c3", expected=blobs[2][1]),
        await cs.writer("c4", total=256, expected=blobs[3][1]),
    ]
    try:
        for w, (data, dgst) in zip(writers, blobs, strict=True):
            await _write_chunks(w, data, 32)
            pre = _now()
            await w.commit(0, "", _LABELS)
            post = _now()
            _eq(w.digest(), dgst, "commit digest")
            await _check_info(subject, dgst, 256, _LABELS, (pre, post), (pre, post))
    finally:
        for w in writers:
            await w.close()


@_case()
async def check_update_status(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(256)
    pre_start = _now()
    w = await cs.writer("c1", total=256, expected=dgst)
    post_start = _now()
    try:
        expected = Status("c1", 0, 256, dgst)
        started = (pre_start, post_start)
        await _check_status(w, expected, EMPTY_DIGEST, started, started)
        written = 0
        for end in (64, 192, 256):
            pre = _now()
            await w.write(data[written:end])
            post = _now()
            written = end
            expected = Status("c1", end, 256, dgst)
            await _check_status(w, expected, digests.of(data[:end]), started, (pre, post))
        pre = _now()
        await w.commit(0, "", _LABELS)
        post = _now()
        await _check_info(subject, dgst, 256, _LABELS, (pre, post), (pre, post))
    finally:
        await w.close()


@_case()
async def check_commit_exists(subject: Subject) -> None:
    """Committing bytes that are already a blob fails with AlreadyExists."""
    cs = subject.store
    data, dgst = create_content(256)
    await _write_blob(cs, "c1", data, dgst)
    for i, expected in enumerate((dgst, "")):
        w = await cs.writer(f"c1-commitexists-{i}")
        try:
            await w.write(data)
            await _raises(AlreadyExists, w.commit(len(data), expected), f"commit {i}")
        finally:
            await w.close()


@_case()
async def check_resume(subject: Subject) -> None:
    """Close half way, open again with the same ref, finish."""
    cs = subject.store
    ref = "cb"
    data, dgst = create_content(256)
    first, second = data[:128], data[128:]
    pre_start = _now()
    w1 = await cs.writer(ref, total=256, expected=dgst)
    post_start = _now()
    started = (pre_start, post_start)
    pre_update = post_start
    await w1.write(first)
    post_update = _now()
    expected = Status(ref, len(first), len(data))
    await _check_status(w1, expected, digests.of(first), started, (pre_update, post_update))
    await w1.close()

    w2 = await cs.writer(ref, total=256, expected=dgst)
    try:
        await _check_status(w2, expected, digests.of(first), started, (pre_update, post_update))
        pre_update = _now()
        await w2.write(second)
        post_update = _now()
        expected = Status(ref, len(data), len(data))
        await _check_status(w2, expected, dgst, started, (pre_update, post_update))
        pre = _now()
        await w2.commit(0, "")
        post = _now()
    finally:
        await w2.close()
    await _check_info(subject, dgst, 256, {}, (pre, post), (pre, post))


ResumeFn = Callable[[Writer, bytes, int, int, str], Awaitable[None]]


async def _resume_truncate(w: Writer, data: bytes, written: int, size: int, dgst: str) -> None:
    await w.truncate(0)
    await _write_chunks(w, data, 1024)
    await w.commit(size, dgst)


async def _resume_discard(w: Writer, data: bytes, written: int, size: int, dgst: str) -> None:
    await _write_chunks(w, data[written:], 1024)
    await w.commit(size, dgst)


async def _resume_copy(w: Writer, data: bytes, written: int, size: int, dgst: str) -> None:
    """containerd's ``content.Copy``: continue from the offset the writer reports."""
    st = await w.status()
    await _write_chunks(w, data[st.offset :], 1024)
    await w.commit(size, dgst)


async def _check_resume_with(subject: Subject, resume: ResumeFn) -> None:
    cs = subject.store
    for i, size in enumerate((500, 5000, 50000)):
        for j, fraction in enumerate((0.0, 0.1, 0.5, 0.9, 1.0)):
            data, dgst = create_content(size)
            limit = int(size * fraction)
            ref = f"ref-{i}-{j}"
            w = await cs.writer(ref, total=size, expected=dgst)
            try:
                await w.write(data[:limit])
            finally:
                await w.close()
            w = await cs.writer(ref, total=size, expected=dgst)
            try:
                _eq((await w.status()).offset, limit, f"offset of resumed {ref}")
                pre = _now()
                await resume(w, data, limit, size, dgst)
                post = _now()
            finally:
                await w.close()
            await _check_info(subject, dgst, size, {}, (pre, post), (pre, post))


@_case()
async def check_resume_truncate(subject: Subject) -> None:
    await _check_resume_with(subject, _resume_truncate)


@_case()
async def check_resume_discard(subject: Subject) -> None:
    await _check_resume_with(subject, _resume_discard)


@_case()
async def check_resume_copy(subject: Subject) -> None:
    await _check_resume_with(subject, _resume_copy)


@_case()
async def check_small_blob(subject: Subject) -> None:
    """A read larger than the blob returns the whole blob."""
    cs = subject.store
    blob = b"foobar"
    dgst = digests.of(blob)
    w = await cs.writer("small-blob", total=len(blob), expected=dgst)
    try:
        await w.write(blob)
        await w.commit(len(blob), dgst)
    finally:
        await w.close()
    reader = await cs.reader_at(dgst)
    try:
        _eq(reader.size, len(blob), "reader size")
        _eq(await reader.read_at(0, len(blob) + 1), blob, "read")
    finally:
        await reader.aclose()


@_case(needs_labels=True)
async def check_labels(subject: Subject) -> None:
    """Labels given at commit, replaced by ``update``, and changed key by key."""
    cs = subject.store
    data, dgst = create_content(256)
    root_time = "2017-11-14T21:43:22Z"
    labels = {"k1": "v1", "k2": "v2", "containerd.io/gc.root": root_time}
    w = await cs.writer("c1-checklabels", total=256, expected=dgst)
    try:
        await w.write(data)
        pre = _now()
        await w.commit(0, "", labels)
        post = _now()
    finally:
        await w.close()
    committed = (pre, post)
    await _check_info(subject, dgst, 256, labels, committed, committed)

    labels = {"k1": "newvalue", "k3": "v3", "containerd.io/gc.root": root_time}
    pre = _now()
    await cs.update(Info(dgst, 256, labels=labels))
    post = _now()
    await _check_info(subject, dgst, 256, labels, committed, (pre, post))

    # Only the named keys change: k3 goes (it is empty in the update), k1 is set back.
    update = {"k1": "v1", "containerd.io/gc.root": "not named, not changed"}
    pre = _now()
    await cs.update(Info(dgst, 256, labels=update), ["labels.k3", "labels.k1"])
    post = _now()
    expected = {"k1": "v1", "containerd.io/gc.root": root_time}
    await _check_info(subject, dgst, 256, expected, committed, (pre, post))
    await _raises(
        InvalidArgument, cs.update(Info(dgst, 256), ["size"]), "update of a non-label field"
    )


@_case()
async def check_commit_error_state(subject: Subject) -> None:
    """Failed commits release the ref and keep the ingest; a good one then succeeds."""
    cs = subject.store
    data, dgst = create_content(256)
    _, other = create_content(256)
    await _write_blob(cs, "c1", data, dgst)
    ref = "c1-commiterror-state"

    w = await cs.writer(ref)
    try:
        await w.write(data)
        await _check_ref_unavailable(cs, ref)
        await _raises(AlreadyExists, w.commit(len(data), dgst), "commit of an existing blob")
    finally:
        await w.close()

    w = await cs.writer(ref)
    try:
        await _check_ref_unavailable(cs, ref)
        await w.write(data)
        await _raises(AlreadyExists, w.commit(len(data), ""), "commit of an existing blob")
    finally:
        await w.close()

    w = await cs.writer(ref)
    longer = data + b"more"
    try:
        await _check_ref_unavailable(cs, ref)
        await w.write(longer)
        await _raises(FailedPrecondition, w.commit(len(longer), other), "commit, wrong digest")
    finally:
        await w.close()
    await _raises(NotFound, cs.info(other), "info after a failed commit")
    await _raises(NotFound, cs.info(digests.of(longer)), "info after a failed commit")

    w = await cs.writer(ref)
    try:
        await _check_ref_unavailable(cs, ref)
        _eq((await w.status()).offset, len(longer), "offset kept after a failed commit")
        await _raises(FailedPrecondition, w.commit(len(data), ""), "commit, wrong size")
    finally:
        await w.close()
    await _raises(NotFound, cs.info(digests.of(longer)), "info after a failed commit")

    w = await cs.writer(ref)
    try:
        await _check_ref_unavailable(cs, ref)
        await w.commit(len(longer), "")
    finally:
        await w.close()
    _eq(await _read_all(cs, digests.of(longer)), longer, "committed blob")

    w = await cs.writer(ref)
    try:
        _eq((await w.status()).offset, 0, "offset of a new ingest on a committed ref")
        await w.write(data)
        await _check_ref_unavailable(cs, ref)
        await _raises(AlreadyExists, w.commit(len(data), dgst), "commit of an existing blob")
    finally:
        await w.close()

    w = await cs.writer(ref)
    try:
        await _check_ref_unavailable(cs, ref)
    finally:
        await w.close()
    w = await cs.writer(ref)
    await w.close()


# --- further cases ------------------------------------------------------------------------


@_case()
async def check_empty_ref(subject: Subject) -> None:
    await _raises(InvalidArgument, subject.store.writer(""), "writer with an empty ref")


@_case()
async def check_empty_blob(subject: Subject) -> None:
    cs = subject.store
    w = await cs.writer("empty")
    try:
        _eq(w.digest(), EMPTY_DIGEST, "digest of nothing")
        await w.commit(0, EMPTY_DIGEST)
    finally:
        await w.close()
    _eq((await cs.info(EMPTY_DIGEST)).size, 0, "size of the empty blob")
    reader = await cs.reader_at(EMPTY_DIGEST)
    try:
        _eq(reader.size, 0, "reader size")
        _eq(await reader.read_at(0, 10), b"", "read of the empty blob")
    finally:
        await reader.aclose()


@_case()
async def check_writer_expected_exists(subject: Subject) -> None:
    """A writer for a blob that is already there fails at once: nothing to send."""
    cs = subject.store
    data, dgst = create_content(100)
    await _write_blob(cs, "first", data, dgst)
    exc = await _raises(AlreadyExists, cs.writer("second", 100, dgst), "writer(expected=)")
    _check(dgst in str(exc), f"message {str(exc)!r} does not name {dgst}")
    await _raises(NotFound, cs.status("second"), "status of a refused writer")


@_case()
async def check_ref_locked(subject: Subject) -> None:
    """One writer per ref; closing the writer frees the ref; other refs are free."""
    cs = subject.store
    w = await cs.writer("locked", total=10)
    try:
        await w.write(b"01234")
        await _check_ref_unavailable(cs, "locked")
        other = await cs.writer("locked-other")
        await other.close()
    finally:
        await w.close()
    w = await cs.writer("locked", total=10)
    try:
        _eq((await w.status()).offset, 5, "offset after the lock was released")
    finally:
        await w.close()
    # A commit releases the ref too.
    w = await cs.writer("locked", total=10)
    try:
        await w.write(b"56789")
        await w.commit(10, digests.of(b"0123456789"))
    finally:
        await w.close()
    w = await cs.writer("locked")
    await w.close()


@_case()
async def check_concurrent_writers(subject: Subject) -> None:
    """Many refs written at once, from concurrent tasks."""
    cs = subject.store
    blobs = [create_content(64 * 1024 + i) for i in range(8)]

    async def put(i: int, data: bytes, dgst: str) -> None:
        w = await cs.writer(f"concurrent-{i}", len(data), dgst)
        try:
            await _write_chunks(w, data, 4096)
            await w.commit(len(data), dgst)
        finally:
            await w.close()

    await asyncio.gather(*(put(i, d, g) for i, (d, g) in enumerate(blobs)))
    for data, dgst in blobs:
        _eq(await _read_all(cs, dgst), data, f"blob {dgst}")


@_case()
async def check_commit_mismatch_leaves_no_blob(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(300)
    w = await cs.writer("mismatch", total=300, expected=dgst)
    try:
        await w.write(data[:200])
        await _raises(FailedPrecondition, w.commit(300, ""), "commit of a short ingest")
    finally:
        await w.close()
    await _raises(NotFound, cs.info(dgst), "info after a failed commit")
    await _raises(NotFound, cs.info(digests.of(data[:200])), "info after a failed commit")
    _eq((await cs.status("mismatch")).offset, 200, "offset kept after a failed commit")

    w = await cs.writer("mismatch", total=300, expected=dgst)
    try:
        await w.write(data[200:])
        await _raises(
            FailedPrecondition, w.commit(300, digests.of(b"other")), "commit, wrong digest"
        )
    finally:
        await w.close()
    await _raises(NotFound, cs.info(dgst), "info after a failed commit")

    w = await cs.writer("mismatch", total=300, expected=dgst)
    try:
        await w.commit(300, dgst)
    finally:
        await w.close()
    _eq(await _read_all(cs, dgst), data, "committed blob")
    await _raises(NotFound, cs.status("mismatch"), "status after commit")


@_case()
async def check_commit_closed_writer(subject: Subject) -> None:
    cs = subject.store
    w = await cs.writer("closed")
    await w.write(b"data")
    await w.close()
    await _raises(FailedPrecondition, w.commit(0, ""), "commit on a closed writer")
    await _raises(NotFound, cs.info(digests.of(b"data")), "info after a refused commit")
    w = await cs.writer("closed")
    try:
        _eq((await w.status()).offset, 4, "offset")
    finally:
        await w.close()


@_case()
async def check_truncate(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(1000)
    w = await cs.writer("truncate", total=1000)
    try:
        await w.write(data[:100])
        await w.write(b"garbage")
        await w.truncate(100)
        st = await w.status()
        _eq(st.offset, 100, "offset after truncate")
        _eq(w.digest(), digests.of(data[:100]), "digest after truncate")
        await _raises(InvalidArgument, w.truncate(-1), "truncate to a negative size")
        await _raises(InvalidArgument, w.truncate(101), "truncate beyond the offset")
        await w.truncate(0)
        _eq((await w.status()).offset, 0, "offset after truncate(0)")
        _eq(w.digest(), EMPTY_DIGEST, "digest after truncate(0)")
        await w.write(data)
        await w.commit(1000, dgst)
    finally:
        await w.close()
    _eq(await _read_all(cs, dgst), data, "committed blob")


@_case()
async def check_abort(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(100)
    w = await cs.writer("aborted", total=100, expected=dgst)
    try:
        await w.write(data[:50])
    finally:
        await w.close()
    _eq((await cs.status("aborted")).offset, 50, "offset before abort")
    await cs.abort("aborted")
    await _raises(NotFound, cs.status("aborted"), "status after abort")
    _eq([s.ref for s in await cs.list_statuses()], [], "ingests after abort")
    await _raises(NotFound, cs.abort("aborted"), "second abort")
    await _raises(NotFound, cs.abort("never-written"), "abort of an unknown ref")
    w = await cs.writer("aborted", total=100, expected=dgst)
    try:
        _eq((await w.status()).offset, 0, "offset of an ingest started again")
        _eq(w.digest(), EMPTY_DIGEST, "digest of an ingest started again")
        await w.write(data)
        await w.commit(100, dgst)
    finally:
        await w.close()
    _eq(await _read_all(cs, dgst), data, "committed blob")


@_case()
async def check_statuses(subject: Subject) -> None:
    cs = subject.store
    await _raises(NotFound, cs.status("unknown"), "status of an unknown ref")
    refs = {"a/1": b"x" * 10, "b/2": b"y" * 20, "c 3:weird..": b""}
    for ref, data in refs.items():
        pre = _now()
        w = await cs.writer(ref, total=100)
        try:
            await w.write(data)
        finally:
            await w.close()
        post = _now()
        st = await cs.status(ref)
        _eq((st.ref, st.offset, st.total), (ref, len(data), 100), f"status of {ref!r}")
        _within(st.started_at, pre, post, "started_at")
        _check(st.updated_at >= st.started_at, "updated_at before started_at")
    listed = await cs.list_statuses()
    _eq(sorted(s.ref for s in listed), sorted(refs), "refs listed")
    for st in listed:
        _eq(st.offset, len(refs[st.ref]), f"listed offset of {st.ref!r}")
    _eq([s.ref for s in await cs.list_statuses(['ref=="a/1"'])], ["a/1"], "filtered by ref")
    both = await cs.list_statuses(['ref=="a/1"', 'ref=="b/2"'])
    _eq(sorted(s.ref for s in both), ["a/1", "b/2"], "filters are alternatives")
    _eq([s.ref for s in await cs.list_statuses(["ref~=^b/"])], ["b/2"], "filtered by regexp")
    _eq(await cs.list_statuses(['ref=="none"']), [], "filter matching nothing")
    await _raises(InvalidArgument, cs.list_statuses(["ref=="]), "invalid filter")


async def _collect(it: AsyncIterator[Info]) -> list[Info]:
    return [info async for info in it]


@_case()
async def check_walk(subject: Subject) -> None:
    cs = subject.store
    _eq(await _collect(cs.walk()), [], "blobs of an empty store")
    blobs: dict[str, bytes] = {}
    for i in range(1, 20):
        data, dgst = create_content(i * 37)
        blobs[dgst] = data
    for dgst, data in blobs.items():
        await _write_blob(cs, dgst, data, dgst)
    # An ingest in progress is not a blob.
    w = await cs.writer("in-progress")
    try:
        await w.write(b"pending")
        found = await _collect(cs.walk())
    finally:
        await w.close()
    _eq(sorted(i.digest for i in found), sorted(blobs), "walked digests")
    for info in found:
        _eq(info.size, len(blobs[info.digest]), f"walked size of {info.digest}")
    some = next(iter(blobs))
    by_digest = await _collect(cs.walk([f'digest=="{some}"']))
    _eq([i.digest for i in by_digest], [some], "walk filtered by digest")
    _eq(await _collect(cs.walk(['digest=="sha256:none"'])), [], "filter matching nothing")
    await _raises(InvalidArgument, _collect(cs.walk(["digest=="])), "invalid filter")


@_case()
async def check_walk_labels(subject: Subject) -> None:
    cs = subject.store
    labelled, d1 = create_content(10)
    plain, d2 = create_content(11)
    await _write_blob(cs, "labelled", labelled, d1, {"test.walk": "yes"})
    await _write_blob(cs, "plain", plain, d2)
    got = [i.digest for i in await _collect(cs.walk(["labels.test.walk==yes"]))]
    _eq(got, [d1] if subject.keeps_labels else [], "walk filtered by label")
    got = [i.digest for i in await _collect(cs.walk(["labels.test.walk"]))]
    _eq(got, [d1] if subject.keeps_labels else [], "walk filtered by label presence")


@_case()
async def check_delete(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(64)
    await _write_blob(cs, "delete", data, dgst)
    await cs.delete(dgst)
    await _raises(NotFound, cs.info(dgst), "info after delete")
    await _raises(NotFound, cs.reader_at(dgst), "reader after delete")
    await _raises(NotFound, cs.delete(dgst), "second delete")
    _eq(await _collect(cs.walk()), [], "blobs after delete")
    # Content can be written again after a delete.
    await _write_blob(cs, "delete-again", data, dgst)
    _eq(await _read_all(cs, dgst), data, "blob written again")


@_case()
async def check_unknown_blob(subject: Subject) -> None:
    cs = subject.store
    _, dgst = create_content(1)
    await _raises(NotFound, cs.info(dgst), "info of an unknown blob")
    await _raises(NotFound, cs.reader_at(dgst), "reader of an unknown blob")
    await _raises(NotFound, cs.delete(dgst), "delete of an unknown blob")


@_case()
async def check_read_at(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(1000)
    await _write_blob(cs, "read-at", data, dgst)
    reader = await cs.reader_at(dgst)
    try:
        _eq(reader.size, 1000, "reader size")
        _eq(await reader.read_at(0, 1000), data, "read of everything")
        _eq(await reader.read_at(10, 5), data[10:15], "read in the middle")
        _eq(await reader.read_at(990, 100), data[990:], "read across the end")
        _eq(await reader.read_at(999, 1), data[999:], "read of the last byte")
        _eq(await reader.read_at(1000, 10), b"", "read at the end")
        _eq(await reader.read_at(10, 0), b"", "read of nothing")
        await _raises(InvalidArgument, reader.read_at(1001, 1), "read past the end")
        await _raises(InvalidArgument, reader.read_at(-1, 1), "read at a negative offset")
        await _raises(InvalidArgument, reader.read_at(0, -1), "read of a negative size")
        # Reads are positional: order does not matter, and they may overlap.
        got = await asyncio.gather(*(reader.read_at(i * 100, 150) for i in range(10)))
        _eq(list(got), [data[i * 100 : i * 100 + 150] for i in range(10)], "parallel reads")
    finally:
        await reader.aclose()


@_case()
async def check_read_blob(subject: Subject) -> None:
    cs = subject.store
    data, dgst = create_content(1000)
    await _write_blob(cs, "read-blob", data, dgst)
    # Twice over: the first read may open the blob, later ones may reuse it.
    for _ in range(2):
        _eq(await cs.read_blob(dgst, 0, 1000), data, "read of everything")
        _eq(await cs.read_blob(dgst, 10, 5), data[10:15], "read in the middle")
        _eq(await cs.read_blob(dgst, 990, 100), data[990:], "read across the end")
        _eq(await cs.read_blob(dgst, 1000, 10), b"", "read at the end")
        _eq(await cs.read_blob(dgst, 10, 0), b"", "read of nothing")
        _eq(await cs.read_blob(dgst, 0, 1 << 40), data, "huge read is clamped")
        await _raises(InvalidArgument, cs.read_blob(dgst, 1001, 1), "read past the end")
        await _raises(InvalidArgument, cs.read_blob(dgst, -1, 1), "read at a negative offset")
        await _raises(InvalidArgument, cs.read_blob(dgst, 0, -1), "read of a negative size")
    got = await asyncio.gather(*(cs.read_blob(dgst, i * 100, 150) for i in range(10)))
    _eq(list(got), [data[i * 100 : i * 100 + 150] for i in range(10)], "parallel reads")
    await cs.delete(dgst)
    await _raises(NotFound, cs.read_blob(dgst, 0, 1), "read after delete")
    _, unknown = create_content(1)
    await _raises(NotFound, cs.read_blob(unknown, 0, 1), "read of an unknown blob")


@_case()
async def check_large_blob(subject: Subject) -> None:
    """8 MiB in 1 MiB writes, read back in odd-sized pieces."""
    cs = subject.store
    chunk = 1 << 20
    data, dgst = create_content(8 * chunk)
    w = await cs.writer("large", total=len(data), expected=dgst)
    try:
        for i in range(8):
            await w.write(data[i * chunk : (i + 1) * chunk])
            st = await w.status()
            _eq((st.offset, st.total), ((i + 1) * chunk, len(data)), "status while writing")
        await w.commit(len(data), dgst)
    finally:
        await w.close()
    _eq((await cs.info(dgst)).size, len(data), "info size")
    reader = await cs.reader_at(dgst)
    try:
        hasher = digests.hasher()
        offset = 0
        while offset < reader.size:
            piece = await reader.read_at(offset, 777_777)
            hasher.update(piece)
            offset += len(piece)
        _eq(f"sha256:{hasher.hexdigest()}", dgst, "digest read back")
    finally:
        await reader.aclose()


@_case()
async def check_other_algorithms(subject: Subject) -> None:
    """sha384 and sha512 blobs are committed under their own digests."""
    cs = subject.store
    data, _ = create_content(500)
    for algorithm in ("sha512", "sha384"):
        dgst = digests.of(data, algorithm)
        w = await cs.writer(f"alg-{algorithm}", total=len(data), expected=dgst)
        try:
            await w.write(data)
            await w.commit(len(data), dgst)
            _eq(w.digest(), dgst, "writer digest after commit")
        finally:
            await w.close()
        _eq(await _read_all(cs, dgst), data, f"{algorithm} blob")
        _eq((await cs.info(dgst)).digest, dgst, "info digest")
    walked = sorted(i.digest for i in await _collect(cs.walk()))
    _eq(walked, sorted(digests.of(data, a) for a in ("sha384", "sha512")), "walked digests")


@_case(needs_reopen=True)
async def check_crash_resume(subject: Subject) -> None:
    """A writer that was never closed is resumed after a restart, from its last write."""
    if subject.reopen is None:
        raise SuiteFailure("crash_resume needs Subject.reopen")
    cs = subject.store
    data, dgst = create_content(3000)
    pre_start = _now()
    w = await cs.writer("crash", total=3000, expected=dgst)
    post_start = _now()
    await w.write(data[:1000])
    await w.write(data[1000:1200])
    # The process dies here: no close, no commit.
    cs2 = await subject.reopen()
    st = await cs2.status("crash")
    _eq((st.ref, st.offset, st.total), ("crash", 1200, 3000), "status after the crash")
    _within(st.started_at, pre_start, post_start, "started_at after the crash")
    w2 = await cs2.writer("crash", total=3000, expected=dgst)
    try:
        _eq((await w2.status()).offset, 1200, "offset of the resumed writer")
        _eq(w2.digest(), digests.of(data[:1200]), "digest of the resumed writer")
        await w2.write(data[1200:])
        await w2.commit(3000, dgst)
    finally:
        await w2.close()
    _eq(await _read_all(cs2, dgst), data, "committed blob")
    await _raises(NotFound, cs2.status("crash"), "status after commit")
