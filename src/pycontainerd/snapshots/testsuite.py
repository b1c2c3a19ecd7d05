"""The snapshotter conformance suite (containerd's ``snapshots/testsuite``, in Python).

Every ``snapshots.interface.Snapshotter`` runs it: overlayfs, native, the namespaced
metadata wrapper, proxies. Each case is an async function of a ``Subject`` (a fresh,
empty snapshotter plus a scratch directory), collected in ``CASES``. Most cases mount
what the snapshotter returns (with ``snapshots.mount``), write files through the
mount, commit, and compare what later snapshots show with a plain directory that had
the same changes applied, as containerd's cases do.

With pytest::

    @pytest.fixture
    async def subject(tmp_path):
        sn = await OverlaySnapshotter.open(tmp_path / "root")
        yield testsuite.Subject(sn, tmp_path / "work", root=tmp_path / "root")
        await sn.aclose()

    @pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
    async def test_conformance(case: testsuite.Case, subject: testsuite.Subject) -> None:
        if reason := case.unsupported(subject):
            pytest.skip(reason)
        await case.run(subject)

Without pytest, ``run_all(factory)`` runs every case on a fresh subject. A case fails
by raising ``SuiteFailure`` (an ``AssertionError``) or the snapshotter's own error.
Cases check error kinds, not messages. Every mount a case makes is unmounted before
the case returns, also when it fails (detached if busy), but a harness should still
sweep its work directory for mounts: a case interrupted by a timeout cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pycontainerd.errdefs import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from pycontainerd.snapshots.interface import Info, Kind, Mount, Snapshotter, Usage
from pycontainerd.snapshots.mount import mount_all, unmount_all

__all__ = [
    "CASES",
    "Applier",
    "Case",
    "Entry",
    "Subject",
    "SuiteFailure",
    "apply",
    "check_directory_equal",
    "chmod",
    "chown",
    "chtimes",
    "create_dir",
    "create_file",
    "link",
    "manifest",
    "mknod",
    "remove_all",
    "rename",
    "run_all",
    "set_xattr",
    "symlink",
]


class SuiteFailure(AssertionError):
    """A snapshotter did not behave as the snapshotter contract says."""


@dataclass(frozen=True, slots=True)
class Subject:
    """A fresh, empty snapshotter under test and where a case may work.

    Attributes:
        snapshotter: the snapshotter; every case starts from no snapshots.
        work: an existing, empty directory for mount points and scratch trees, on a
            file system where the snapshotter's mounts can be made.
        root: the snapshotter's root when it keeps containerd's local layout
            (``snapshots/<id>`` directories); enables the cases that inspect it.
        can_mount: the returned mounts can be mounted here (root, real kernel). When
            False the cases that write through mounts skip.
    """

    snapshotter: Snapshotter
    work: Path
    root: Path | None = None
    can_mount: bool = True


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    run: Callable[[Subject], Awaitable[None]]
    needs_mount: bool = False
    needs_layout: bool = False

    def unsupported(self, subject: Subject) -> str | None:
        """Why ``subject`` cannot run this case, or None when it can."""
        if self.needs_mount and not subject.can_mount:
            return f"{self.name}: the subject cannot mount snapshots"
        if self.needs_layout and subject.root is None:
            return f"{self.name}: the snapshotter does not keep the snapshots/<id> layout"
        return None


CASES: list[Case] = []


def _case(
    *, needs_mount: bool = False, needs_layout: bool = False
) -> Callable[[Callable[[Subject], Awaitable[None]]], Callable[[Subject], Awaitable[None]]]:
    def register(fn: Callable[[Subject], Awaitable[None]]) -> Callable[[Subject], Awaitable[None]]:
        name = fn.__name__.removeprefix("check_")
        CASES.append(Case(name, fn, needs_mount=needs_mount, needs_layout=needs_layout))
        return fn

    return register


async def run_all(
    factory: Callable[[], AbstractAsyncContextManager[Subject]],
) -> list[str]:
    """Run every case, each on a fresh subject from ``factory``.

    Returns:
        The skip reasons of the cases the subjects do not support.

    Raises:
        SuiteFailure: the first failing case (its name leads the message); a
            snapshotter error raised by a case propagates with the case named in a note.
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
                exc.add_note(f"in snapshotter testsuite case {case.name}")
                raise
    return skipped


# --- file trees: appliers and manifests ---------------------------------------------------

Applier = Callable[[Path], None]
"""A change to a directory tree (continuity's ``fstest.Applier``); blocking."""


def _at(root: Path, name: str) -> Path:
    return root / name.lstrip("/")


def apply(*appliers: Applier) -> Applier:
    """All of ``appliers``, in order."""

    def run(root: Path) -> None:
        for a in appliers:
            a(root)

    return run


def create_file(name: str, content: bytes, perm: int = 0o644) -> Applier:
    """Write ``name`` (replacing it) with exactly ``perm``, whatever the umask."""

    def run(root: Path) -> None:
        path = _at(root, name)
        path.write_bytes(content)
        os.chmod(path, perm)

    return run


def create_dir(name: str, perm: int = 0o755) -> Applier:
    """Create ``name`` and missing parents; ``name`` itself gets exactly ``perm``."""

    def run(root: Path) -> None:
        path = _at(root, name)
        path.mkdir(perm, parents=True, exist_ok=True)
        os.chmod(path, perm)

    return run


def remove_all(name: str) -> Applier:
    """Remove ``name`` and what is under it; a missing name is fine."""

    def run(root: Path) -> None:
        path = _at(root, name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    return run


def chown(name: str, uid: int, gid: int) -> Applier:
    def run(root: Path) -> None:
        os.lchown(_at(root, name), uid, gid)

    return run


def chmod(name: str, perm: int) -> Applier:
    def run(root: Path) -> None:
        os.chmod(_at(root, name), perm)

    return run


def link(old: str, new: str) -> Applier:
    """Hard link ``new`` to ``old``."""

    def run(root: Path) -> None:
        os.link(_at(root, old), _at(root, new))

    return run


def symlink(target: str, name: str) -> Applier:
    def run(root: Path) -> None:
        os.symlink(target, _at(root, name))

    return run


def rename(old: str, new: str) -> Applier:
    """Rename as ``mv`` does: where the kernel answers EXDEV (overlayfs moving a
    directory that lives in a lower layer, without ``redirect_dir``), copy then delete."""

    def run(root: Path) -> None:
        src, dst = _at(root, old), _at(root, new)
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(src, dst, copy_function=_copy_with_owner)

    return run


def _copy_with_owner(src: str, dst: str) -> None:
    shutil.copy2(src, dst, follow_symlinks=False)
    st = os.lstat(src)
    os.lchown(dst, st.st_uid, st.st_gid)


def mknod(name: str, mode: int, device: int = 0) -> Applier:
    """A device node, fifo or socket; ``mode`` includes the file type."""

    def run(root: Path) -> None:
        path = _at(root, name)
        os.mknod(path, mode, device)
        os.chmod(path, stat.S_IMODE(mode))

    return run


def set_xattr(name: str, key: str, value: bytes) -> Applier:
    def run(root: Path) -> None:
        os.setxattr(_at(root, name), key, value, follow_symlinks=False)

    return run


def chtimes(name: str, atime_ns: int, mtime_ns: int) -> Applier:
    def run(root: Path) -> None:
        os.utime(_at(root, name), ns=(atime_ns, mtime_ns), follow_symlinks=False)

    return run


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a tree as ``check_directory_equal`` compares it."""

    kind: str
    mode: int
    uid: int
    gid: int
    detail: str  # size and digest, link target or device numbers
    xattrs: tuple[tuple[str, bytes], ...] = ()
    links: tuple[str, ...] = ()  # the other paths of the tree sharing this inode
    mtime_ns: int | None = None


# Bookkeeping a backend may keep on its own files: overlayfs marks opaque directories
# and copy-up origins in trusted.overlay.*, which show through a bind of one layer.
_IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "security.selinux")

_KINDS = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "char"),
    (stat.S_ISBLK, "block"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


def _file_detail(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{size} bytes sha256:{h.hexdigest()}"


def manifest(root: Path, *, times: bool = False) -> dict[str, Entry]:
    """Every path under ``root`` (not ``root`` itself), keyed ``/a/b``.

    Compared: file type, permission and set-id bits, owner, regular files' size and
    content, link targets, device numbers, extended attributes (but overlayfs's own
    and SELinux labels), hard links within the tree and, with ``times``, mtimes.
    """
    raw: dict[str, tuple[os.stat_result, str, str, tuple[tuple[str, bytes], ...]]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    pending = [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                rel = "/" + os.path.relpath(entry.path, root)
                kind = next(k for test, k in _KINDS if test(st.st_mode))
                if kind == "file":
                    detail = _file_detail(entry.path, st.st_size)
                    if st.st_nlink > 1:
                        inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
                elif kind == "symlink":
                    detail = os.readlink(entry.path)
                elif kind in ("char", "block"):
                    detail = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                else:
                    detail = ""
                try:
                    names = os.listxattr(entry.path, follow_symlinks=False)
                except OSError:
                    names = []
                xattrs = tuple(
                    sorted(
                        (n, os.getxattr(entry.path, n, follow_symlinks=False))
                        for n in names
                        if not n.startswith(_IGNORED_XATTR_PREFIXES)
                    )
                )
                raw[rel] = (st, kind, detail, xattrs)
                if kind == "dir":
                    pending.append(Path(entry.path))
    out: dict[str, Entry] = {}
    link_groups = {p: group for group in inodes.values() if len(group) > 1 for p in group}
    for rel, (st, kind, detail, xattrs) in raw.items():
        others = tuple(sorted(p for p in link_groups.get(rel, ()) if p != rel))
        out[rel] = Entry(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            detail=detail,
            xattrs=xattrs,
            links=others,
            mtime_ns=st.st_mtime_ns if times else None,
        )
    return out


def check_directory_equal(expected: Path, actual: Path, *, times: bool = False) -> None:
    """Raise SuiteFailure listing how the tree ``actual`` differs from ``expected``."""
    want, got = manifest(expected, times=times), manifest(actual, times=times)
    problems = [f"missing {p}" for p in sorted(want.keys() - got.keys())]
    problems += [f"unexpected {p}" for p in sorted(got.keys() - want.keys())]
    for p in sorted(want.keys() & got.keys()):
        if want[p] != got[p]:
            problems.append(f"{p}: expected {want[p]}, got {got[p]}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SuiteFailure(f"directory {actual} differs from {expected}:\n  {shown}{more}")


# --- helpers ------------------------------------------------------------------------------

_ids = itertools.count(1)


def _labels() -> dict[str, str]:
    # Like containerd's suite: a gc root label, so a metadata-wrapped snapshotter's
    # garbage collector keeps what the cases create.
    return {"containerd.io/gc.root": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


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


@contextlib.asynccontextmanager
async def _mounted(subject: Subject, mounts: list[Mount]) -> AsyncIterator[Path]:
    """Mount on a fresh directory under ``work``; always unmount (detaching if busy)."""
    _check(len(mounts) >= 1, "expected mounts to have entries")
    target = subject.work / f"mnt-{next(_ids)}"
    target.mkdir()
    await asyncio.to_thread(mount_all, mounts, target)
    try:
        yield target
    finally:
        await asyncio.to_thread(unmount_all, target)


@contextlib.asynccontextmanager
async def _scratch(subject: Subject, prefix: str) -> AsyncIterator[Path]:
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix, dir=subject.work))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def _apply_to(path: Path, applier: Applier) -> None:
    await asyncio.to_thread(applier, path)


async def _check_equal(expected: Path, actual: Path, *, times: bool = False) -> None:
    await asyncio.to_thread(check_directory_equal, expected, actual, times=times)


async def _check_equal_with_applier(subject: Subject, actual: Path, applier: Applier) -> None:
    async with _scratch(subject, "applied-") as expected:
        await _apply_to(expected, applier)
        await _check_equal(expected, actual)


async def _create_snapshot(subject: Subject, parent: str, applier: Applier) -> str:
    """Prepare on ``parent``, apply through a mount, commit; the committed name."""
    sn = subject.snapshotter
    name = f"layer-{next(_ids)}"
    prepare = f"{name}-prepare"
    mounts = await sn.prepare(prepare, parent, _labels())
    async with _mounted(subject, mounts) as target:
        await _apply_to(target, applier)
    await sn.commit(name, prepare, _labels())
    return name


async def _check_snapshot(subject: Subject, name: str, expected: Path) -> None:
    """A view of ``name`` shows exactly the tree ``expected``."""
    sn = subject.snapshotter
    view = f"{name}-view"
    mounts = await sn.view(view, name, _labels())
    try:
        async with _mounted(subject, mounts) as target:
            await _check_equal(expected, target)
    finally:
        await sn.remove(view)


async def _check_snapshots(subject: Subject, *appliers: Applier) -> None:
    """Stack one layer per applier; after each, a view equals a flat directory that
    had every applier so far applied."""
    async with _scratch(subject, "flat-") as flat:
        parent = ""
        for i, applier in enumerate(appliers, 1):
            try:
                name = await _create_snapshot(subject, parent, applier)
                await _apply_to(flat, applier)
                await _check_snapshot(subject, name, flat)
            except SuiteFailure as exc:
                raise SuiteFailure(f"layer {i}: {exc}") from exc
            parent = name


async def _walk(sn: Snapshotter, *filters: str) -> dict[str, Info]:
    return {info.name: info async for info in sn.walk(filters)}


# --- cases ported from containerd's testsuite ---------------------------------------------


@_case(needs_mount=True)
async def check_basic(subject: Subject) -> None:
    """Prepare, write, commit, stack a second layer, view the result, remove in order."""
    sn = subject.snapshotter
    initial = apply(
        create_file("/foo", b"foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    )
    diff = apply(
        create_file("/bar", b"bar\n", 0o777),
        create_file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    )

    async with _mounted(subject, await sn.prepare("preparing", "", _labels())) as target:
        await _apply_to(target, initial)
    await sn.commit("committed", "preparing", _labels())
    si = await sn.stat("committed")
    _eq(si.parent, "", "parent of committed")
    _eq(si.kind, Kind.COMMITTED, "kind of committed")
    await _raises(NotFound, sn.stat("preparing"), "stat of a key after its commit")

    async with _mounted(subject, await sn.prepare("nextlayer", "committed", _labels())) as target:
        await _check_equal_with_applier(subject, target, initial)
        await _apply_to(target, diff)
    ni = await sn.stat("nextlayer")
    _eq(ni.parent, "committed", "parent of nextlayer")
    _eq(ni.kind, Kind.ACTIVE, "kind of nextlayer")

    await sn.commit("committed-next", "nextlayer", _labels())
    si2 = await sn.stat("committed-next")
    _eq(si2.parent, "committed", "parent of committed-next")
    _eq(si2.kind, Kind.COMMITTED, "kind of committed-next")
    await _raises(NotFound, sn.stat("nextlayer"), "stat of a key after its commit")

    walked = await _walk(sn)
    for expected in (si, si2):
        _eq(walked.get(expected.name), expected, f"walked info of {expected.name}")

    async with _mounted(subject, await sn.view("nextnextlayer", "committed-next", _labels())) as t:
        await _check_equal_with_applier(subject, t, apply(initial, diff))

    await sn.remove("nextnextlayer")
    await _raises(FailedPrecondition, sn.remove("committed"), "remove of a parent")
    await sn.remove("committed-next")
    await sn.remove("committed")
    _eq(await _walk(sn), {}, "snapshots left after removing all")


@_case(needs_mount=True)
async def check_stat_active(subject: Subject) -> None:
    sn = subject.snapshotter
    async with _mounted(subject, await sn.prepare("preparing", "", _labels())) as target:
        await _apply_to(target, create_file("/foo", b"foo\n", 0o777))
        si = await sn.stat("preparing")
    _eq(si.name, "preparing", "name")
    _eq(si.kind, Kind.ACTIVE, "kind")
    _eq(si.parent, "", "parent")


@_case(needs_mount=True)
async def check_stat_committed(subject: Subject) -> None:
    sn = subject.snapshotter
    async with _mounted(subject, await sn.prepare("preparing", "", _labels())) as target:
        await _apply_to(target, create_file("/foo", b"foo\n", 0o777))
    await sn.commit("committed", "preparing", _labels())
    si = await sn.stat("committed")
    _eq(si.name, "committed", "name")
    _eq(si.kind, Kind.COMMITTED, "kind")
    _eq(si.parent, "", "parent")


@_case(needs_mount=True)
async def check_transitivity(subject: Subject) -> None:
    """A <- B: B's parent is A and A has none."""
    sn = subject.snapshotter
    async with _mounted(subject, await sn.prepare("preparing", "", _labels())) as target:
        await _apply_to(target, create_file("/foo", b"foo\n", 0o777))
    await sn.commit("snapA", "preparing", _labels())
    async with _mounted(subject, await sn.prepare("next", "snapA", _labels())) as target:
        await _apply_to(target, create_file("/foo", b"foo bar\n", 0o777))
    await sn.commit("snapB", "next", _labels())
    si_a, si_b = await sn.stat("snapA"), await sn.stat("snapB")
    si_parent_b = await sn.stat(si_b.parent)
    _eq(si_a.parent, "", "parent of A")
    _eq(si_b.parent, "snapA", "parent of B")
    _eq(si_parent_b.parent, "", "parent of B's parent")


@_case()
async def check_prepare_view_same_key(subject: Subject) -> None:
    """A key used by prepare or view cannot be used again by either."""
    sn = subject.snapshotter
    await sn.prepare("preparing", "", _labels())
    await sn.commit("snapA", "preparing", _labels())
    await sn.prepare("newlayer", "snapA", _labels())
    await _raises(AlreadyExists, sn.view("newlayer", "snapA", _labels()), "view on a prepare key")
    await sn.prepare("prepLayer", "snapA", _labels())
    await _raises(AlreadyExists, sn.prepare("prepLayer", "snapA", _labels()), "second prepare")
    await sn.view("viewLayer", "snapA", _labels())
    await _raises(AlreadyExists, sn.view("viewLayer", "snapA", _labels()), "second view")
    await _raises(AlreadyExists, sn.prepare("snapA", "", _labels()), "prepare on a name")


async def _base_snapshots(sn: Snapshotter) -> None:
    """c1 <- c2 committed; a1 on c2, a2 alone (active); v1 on c2, v2 alone (views)."""
    await sn.prepare("c1-a", "", _labels())
    await sn.commit("c1", "c1-a", _labels())
    await sn.prepare("c2-a", "c1", _labels())
    await sn.commit("c2", "c2-a", _labels())
    await sn.prepare("a1", "c2", _labels())
    await sn.prepare("a2", "", _labels())
    await sn.view("v1", "c2", _labels())
    await sn.view("v2", "", _labels())


@_case()
async def check_update(subject: Subject) -> None:
    """Labels change (all, or one by one); times move; kind, name and parent do not."""
    sn = subject.snapshotter
    t1 = time.time_ns()
    await _base_snapshots(sn)
    t2 = time.time_ns()
    cases = [
        ("c1", Kind.COMMITTED, ""),
        ("c2", Kind.COMMITTED, "c1"),
        ("a1", Kind.ACTIVE, "c2"),
        ("a2", Kind.ACTIVE, ""),
        ("v1", Kind.VIEW, "c2"),
        ("v2", Kind.VIEW, ""),
    ]
    for name, kind, parent in cases:
        st = await sn.stat(name)
        _within(st.created_at, t1, t2, f"created_at of {name}")
        _eq(st.updated_at, st.created_at, f"updated_at of fresh {name}")
        _eq((st.kind, st.parent, st.name), (kind, parent, name), f"kind/parent/name of {name}")
        created = st.created_at
        root_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        expected = {"l1": "v1", "l2": "v2", "l3": "v3", "containerd.io/gc.root": root_time}
        u1 = time.time_ns()
        st = await sn.update(replace(st, parent="doesnotexist", labels=expected))
        u2 = time.time_ns()
        _eq(st.created_at, created, f"created_at of {name} after update")
        _within(st.updated_at, u1, u2, f"updated_at of {name} after update")
        _eq((st.kind, st.parent, st.name), (kind, parent, name), f"kind/parent/name of {name}")
        _eq(dict(st.labels), expected, f"labels of {name} after replacing all")

        st = await sn.update(
            replace(st, labels={"l1": "updated", "l4": "v4"}), ["labels.l1", "labels.l2"]
        )
        expected = {"l1": "updated", "l3": "v3", "containerd.io/gc.root": root_time}
        _eq(dict(st.labels), expected, f"labels of {name} after updating l1 and l2")

        expected = {"l4": "v4", "containerd.io/gc.root": root_time}
        st = await sn.update(replace(st, labels=expected), ["labels"])
        _eq(dict(st.labels), expected, f"labels of {name} after updating labels")
        _eq(dict((await sn.stat(name)).labels), expected, f"stored labels of {name}")

        await _raises(
            InvalidArgument,
            sn.update(replace(st, parent="doesnotexist"), ["parent"]),
            "update of the parent field",
        )


@_case()
async def check_remove(subject: Subject) -> None:
    """A removed key is free again, for prepare or view, on any parent."""
    sn = subject.snapshotter
    await sn.prepare("committed-a", "", _labels())
    await sn.commit("committed-1", "committed-a", _labels())
    await sn.prepare("reuse-1", "committed-1", _labels())
    await sn.remove("reuse-1")
    await sn.view("reuse-1", "committed-1", _labels())
    await sn.remove("reuse-1")
    await sn.prepare("reuse-1", "", _labels())
    await sn.remove("committed-1")
    await sn.commit("committed-1", "reuse-1", _labels())
    _eq((await sn.stat("committed-1")).parent, "", "parent of the recommitted name")


@_case(needs_mount=True)
async def check_view_readonly(subject: Subject) -> None:
    """A view's mount refuses writes (checked on a real mount, not the options)."""
    sn = subject.snapshotter
    await sn.prepare("preparing", "", _labels())
    await sn.commit("committed", "preparing", _labels())
    async with _mounted(subject, await sn.view("view", "committed", _labels())) as target:
        try:
            await _apply_to(target, create_file("/testfile", b"testcontent", 0o777))
        except OSError:
            pass  # EROFS is expected, but any refusal will do
        else:
            raise SuiteFailure(f"write to view mount {target} did not fail")
    await sn.remove("view")
    await sn.remove("committed")


@_case()
async def check_walk(subject: Subject) -> None:
    """Walk filters on kind, name, parent and labels, any-of across filter strings."""
    sn = subject.snapshotter
    gc = {"containerd.io/gc.root": "check-walk"}
    await sn.prepare("a-np", "", gc)
    await sn.prepare("p-tmp", "", gc)
    await sn.commit("p", "p-tmp", gc)
    await sn.prepare("a", "p", gc)
    await sn.view("v", "p", gc)
    await sn.prepare("p-wl-tmp", "", gc)
    await sn.commit("p-wl", "p-wl-tmp", {"l": "1", **gc})
    await sn.prepare("a-wl", "p-wl", {"l": "2", **gc})
    await sn.view("v-wl", "p-wl", {"l": "3", **gc})
    await sn.prepare("a-np-wl", "", {"l": "2", **gc})

    gc_filter = 'labels."containerd.io/gc.root"==check-walk'
    table: list[tuple[list[str], set[str]]] = [
        ([gc_filter], {"a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"}),
        ([f"kind==active,{gc_filter}"], {"a-np", "a", "a-wl", "a-np-wl"}),
        ([f"kind==view,{gc_filter}"], {"v", "v-wl"}),
        ([f"kind==committed,{gc_filter}"], {"p", "p-wl"}),
        (["name==p", "name==a-np-wl"], {"p", "a-np-wl"}),
        (["name==a-wl,labels.l"], {"a-wl"}),
        (["parent==p"], {"a", "v"}),
        ([f'parent!="",{gc_filter}'], {"a", "v", "a-wl", "v-wl"}),
        (["labels.l"], {"p-wl", "a-wl", "v-wl", "a-np-wl"}),
        (["labels.l==2"], {"a-wl", "a-np-wl"}),
    ]
    for filters, expected in table:
        _eq(set(await _walk(sn, *filters)), expected, f"walk {filters}")


@_case(needs_mount=True)
async def check_layer_file_update(subject: Subject) -> None:
    """Changing a file's content and mode in a child layer (twice, on fresh chains)."""
    l1 = apply(
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    )
    l2 = apply(
        create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    )
    for _ in range(2):
        await _check_snapshots(subject, l1, l2)


@_case(needs_mount=True)
async def check_remove_directory_in_lower_layer(subject: Subject) -> None:
    """A directory removed and recreated hides the lower one's files (opaque)."""
    await _check_snapshots(
        subject,
        apply(create_dir("/lib", 0o700), create_file("/lib/hidden", b"", 0o644)),
        apply(
            remove_all("/lib"),
            create_dir("/lib", 0o700),
            create_file("/lib/not-hidden", b"", 0o644),
        ),
        apply(create_file("/lib/newfile", b"", 0o644)),
    )


@_case(needs_mount=True)
async def check_chown(subject: Subject) -> None:
    await _check_snapshots(
        subject,
        apply(
            create_dir("/opt", 0o700),
            create_dir("/opt/a", 0o700),
            create_dir("/opt/a/b", 0o700),
            create_file("/opt/a/b/file.txt", b"hello", 0o644),
        ),
        apply(
            chown("/opt", 1, 1),
            chown("/opt/a", 1, 1),
            chown("/opt/a/b", 1, 1),
            chown("/opt/a/b/file.txt", 1, 1),
        ),
    )


@_case(needs_mount=True)
async def check_rename(subject: Subject) -> None:
    """Renamed directories and files, and a file renamed over another.

    containerd's suite skips this because overlayfs answers EXDEV for a directory from
    a lower layer; the applier falls back to copying then, as ``mv`` does.
    """
    await _check_snapshots(
        subject,
        apply(
            create_dir("/dir1", 0o700),
            create_dir("/somefiles", 0o700),
            create_file("/somefiles/f1", b"was here first!", 0o644),
            create_file("/somefiles/f2", b"nothing interesting", 0o644),
        ),
        apply(
            rename("/dir1", "/dir2"),
            create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
            rename("/somefiles/f1-overwrite", "/somefiles/f1"),
            rename("/somefiles/f2", "/somefiles/f3"),
        ),
    )


@_case(needs_mount=True)
async def check_directory_permission_on_commit(subject: Subject) -> None:
    await _check_snapshots(
        subject,
        apply(
            create_dir("/dir1", 0o700),
            create_dir("/dir2", 0o700),
            create_dir("/dir3", 0o700),
            create_dir("/dir4", 0o700),
            create_file("/dir4/f1", b"...", 0o644),
            create_dir("/dir5", 0o700),
            create_file("/dir5/f1", b"...", 0o644),
            chown("/dir1", 1, 1),
            chown("/dir2", 1, 1),
            chown("/dir3", 1, 1),
            chown("/dir5", 1, 1),
            chown("/dir5/f1", 1, 1),
        ),
        apply(
            chown("/dir2", 0, 0),
            remove_all("/dir3"),
            chown("/dir4", 1, 1),
            chown("/dir4/f1", 1, 1),
        ),
        apply(
            create_dir("/dir3", 0o700),
            chown("/dir3", 1, 1),
            remove_all("/dir5"),
            create_dir("/dir5", 0o700),
            chown("/dir5", 1, 1),
        ),
    )


@_case(needs_mount=True)
async def check_remove_intermediate_snapshot(subject: Subject) -> None:
    """base <- inter <- top: inter cannot go while top exists; top-down removal works."""
    sn = subject.snapshotter
    async with _mounted(subject, await sn.prepare("base", "", _labels())):
        await sn.commit("committed-base", "base", _labels())
        await sn.prepare("intermediate", "committed-base", _labels())
        await sn.commit("committed-inter", "intermediate", _labels())
        await sn.prepare("toplayer", "committed-inter", _labels())
        await _raises(
            FailedPrecondition, sn.remove("committed-inter"), "remove of an intermediate layer"
        )
        await sn.remove("toplayer")
        await sn.remove("committed-inter")
    await sn.remove("committed-base")


@_case(needs_mount=True)
async def check_deleted_files_in_child_snapshot(subject: Subject) -> None:
    """A file deleted in a child stays deleted in the child's children (whiteouts)."""
    await _check_snapshots(
        subject,
        apply(create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777)),
        apply(remove_all("/foobar")),
        apply(),
    )


@_case(needs_mount=True)
async def check_move_file_from_lower_layer(subject: Subject) -> None:
    """Files moved (by hard link, then unlink) out of a lower layer's directory."""
    await _check_snapshots(
        subject,
        apply(
            create_dir("/dir1", 0o700),
            create_file("/dir1/f1", b"Hello", 0o644),
            create_dir("dir2", 0o700),
            create_file("dir2/f2", b"...", 0o644),
        ),
        apply(
            create_dir("/dir3", 0o700),
            create_file("/dir3/f1", b"Hello", 0o644),
            remove_all("/dir1"),
            link("dir2/f2", "dir3/f2"),
            remove_all("dir2/f2"),
        ),
    )


@_case()
async def check_stat_in_walk(subject: Subject) -> None:
    """What walk yields is what stat says."""
    sn = subject.snapshotter
    prefix = "stats-in-walk-"
    await sn.prepare(f"{prefix}c1-a", "", _labels())
    await sn.commit(f"{prefix}c1", f"{prefix}c1-a", _labels())
    await sn.prepare(f"{prefix}c2-a", f"{prefix}c1", _labels())
    await sn.commit(f"{prefix}c2", f"{prefix}c2-a", _labels())
    await sn.prepare(f"{prefix}a1", f"{prefix}c2", _labels())
    await sn.view(f"{prefix}v1", f"{prefix}c2", _labels())
    walked = await _walk(sn)
    _eq(len(walked), 4, "number of snapshots walked")
    for name, info in walked.items():
        _eq(await sn.stat(name), info, f"stat of walked {name}")


@_case()
async def check_close_twice(subject: Subject) -> None:
    sn = subject.snapshotter
    await sn.prepare("close-twice-prepare", "", _labels())
    await sn.commit("close-twice", "close-twice-prepare", _labels())
    await sn.remove("close-twice")
    await sn.aclose()
    await sn.aclose()


@_case(needs_mount=True)
async def check_root_permission(subject: Subject) -> None:
    """A fresh snapshot's root directory is 0755."""
    sn = subject.snapshotter
    async with _mounted(subject, await sn.prepare("preparing", "", _labels())) as target:
        mode = stat.S_IMODE((await asyncio.to_thread(os.stat, target)).st_mode)
    _eq(oct(mode), oct(0o755), "mode of the snapshot root")


LAYERS = 128


@_case(needs_mount=True)
async def check_128_layers_mount(subject: Subject) -> None:
    """A chain of 128 layers, each checked against a flat copy before and after its
    changes; the mount options of the deepest ones exceed a page uncompacted."""
    sn = subject.snapshotter
    lowest = apply(
        create_file("/bottom", b"way at the bottom\n", 0o777),
        create_file("/overwriteme", b"FIRST!\n", 0o777),
        create_dir("/ADDHERE", 0o755),
        create_dir("/ONLYME", 0o755),
        create_file("/ONLYME/bottom", b"bye!\n", 0o777),
    )
    appliers = [lowest] + [
        apply(
            create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
            create_file(f"/ADDHERE/file-{i}", b"same\n", 0o755),
            remove_all("/ONLYME"),
            create_dir("/ONLYME", 0o755),
            create_file(f"/ONLYME/file-{i}", b"only me!\n", 0o777),
        )
        for i in range(1, LAYERS)
    ]
    async with _scratch(subject, "flat-") as flat:
        parent = ""
        for i, applier in enumerate(appliers):
            key = f"prepare-layer-{i}"
            try:
                async with _mounted(subject, await sn.prepare(key, parent, _labels())) as target:
                    await _check_equal(flat, target)
                    await _apply_to(flat, applier)
                    await _apply_to(target, applier)
                    await _check_equal(flat, target)
            except SuiteFailure as exc:
                raise SuiteFailure(f"layer {i}: {exc}") from exc
            parent = f"committed-{i}"
            await sn.commit(parent, key, _labels())
        async with _mounted(subject, await sn.view("fullview", parent, _labels())) as target:
            await _check_equal(flat, target)


# --- further cases ------------------------------------------------------------------------


@_case()
async def check_commit_requires_active(subject: Subject) -> None:
    """Only an active snapshot commits; a failed commit changes nothing."""
    sn = subject.snapshotter
    await sn.prepare("base-a", "", _labels())
    await sn.commit("base", "base-a", _labels())
    await sn.view("view", "base", _labels())
    await sn.prepare("active", "base", _labels())
    await _raises(FailedPrecondition, sn.commit("from-view", "view"), "commit of a view")
    await _raises(FailedPrecondition, sn.commit("from-base", "base"), "commit of a committed")
    await _raises(AlreadyExists, sn.commit("base", "active"), "commit onto a taken name")
    await _raises(NotFound, sn.commit("other", "missing"), "commit of a missing key")
    _eq((await sn.stat("view")).kind, Kind.VIEW, "kind of view after failed commit")
    _eq((await sn.stat("active")).kind, Kind.ACTIVE, "kind of active after failed commit")
    await _raises(NotFound, sn.stat("from-view"), "stat of a name a failed commit used")
    _eq(set(await _walk(sn)), {"base", "view", "active"}, "snapshots after failed commits")


@_case()
async def check_mounts(subject: Subject) -> None:
    """``mounts`` repeats what prepare and view returned; committed ones have none."""
    sn = subject.snapshotter
    base_mounts = await sn.prepare("base-a", "", _labels())
    _eq(await sn.mounts("base-a"), base_mounts, "mounts of an active snapshot")
    await sn.commit("base", "base-a", _labels())
    active = await sn.prepare("active", "base", _labels())
    view = await sn.view("view", "base", _labels())
    _eq(await sn.mounts("active"), active, "mounts of an active snapshot with a parent")
    _eq(await sn.mounts("view"), view, "mounts of a view")
    await _raises(FailedPrecondition, sn.mounts("base"), "mounts of a committed snapshot")
    await _raises(NotFound, sn.mounts("missing"), "mounts of a missing key")


@_case()
async def check_error_kinds(subject: Subject) -> None:
    """The error kind of each misuse, as containerd's clients test for them."""
    sn = subject.snapshotter
    await sn.prepare("active", "", _labels())
    await sn.view("view", "", _labels())
    await _raises(NotFound, sn.stat("missing"), "stat of a missing key")
    await _raises(NotFound, sn.usage("missing"), "usage of a missing key")
    await _raises(NotFound, sn.remove("missing"), "remove of a missing key")
    await _raises(NotFound, sn.update(Info(kind=Kind.ACTIVE, name="missing")), "update missing")
    await _raises(NotFound, sn.prepare("x", "missing"), "prepare on a missing parent")
    await _raises(NotFound, sn.view("x", "missing"), "view on a missing parent")
    await _raises(InvalidArgument, sn.prepare("x", "active"), "prepare on an active parent")
    await _raises(InvalidArgument, sn.view("x", "view"), "view on a view parent")
    await _raises(InvalidArgument, _walk(sn, "name=="), "walk with a bad filter")
    await _raises(NotFound, sn.stat("x"), "stat of a key whose creation failed")


@_case(needs_mount=True)
async def check_usage(subject: Subject) -> None:
    """Usage counts what a snapshot's own files take; commit keeps the measure."""
    sn = subject.snapshotter
    size = 1 << 20
    async with _mounted(subject, await sn.prepare("active", "", _labels())) as target:
        empty = await sn.usage("active")
        await _apply_to(target, create_file("/data", os.urandom(size), 0o644))
    used = await sn.usage("active")
    _check(used.inodes >= empty.inodes + 1, f"inodes {used.inodes} after adding a file")
    # Allocation is in blocks, and some file systems reserve ahead of a file's end.
    _within(used.size, empty.size + size, empty.size + 2 * size, "size after writing 1 MiB")
    await sn.commit("committed", "active", _labels())
    committed = await sn.usage("committed")
    _eq(committed.inodes, used.inodes, "inodes of the committed snapshot")
    _within(committed.size, empty.size + size, used.size, "size of the committed snapshot")
    await sn.view("view", "committed", _labels())
    _eq(await sn.usage("view"), Usage(), "usage of a view")


@_case()
async def check_remove_then_reuse_key(subject: Subject) -> None:
    """A key prepared again after removal starts empty, not with the old data."""
    sn = subject.snapshotter
    await sn.prepare("reused", "", _labels())
    if subject.can_mount:
        async with _mounted(subject, await sn.mounts("reused")) as target:
            await _apply_to(target, create_file("/stale", b"old data", 0o644))
    await sn.remove("reused")
    mounts = await sn.prepare("reused", "", _labels())
    _eq((await sn.stat("reused")).kind, Kind.ACTIVE, "kind of the reused key")
    if subject.can_mount:
        async with _mounted(subject, mounts) as target:
            _eq(await asyncio.to_thread(os.listdir, target), [], "files in the reused key")


@_case()
async def check_concurrent_prepares(subject: Subject) -> None:
    """Many prepares and views at once all succeed; one key taken by a race goes to
    exactly one caller; concurrent commits and removes each take effect."""
    sn = subject.snapshotter
    if subject.can_mount:
        parent = await _create_snapshot(
            subject, "", create_file("/shared", b"from the parent", 0o644)
        )
    else:
        await sn.prepare("parent-a", "", _labels())
        await sn.commit("parent", "parent-a", _labels())
        parent = "parent"
    actives = [f"active-{i}" for i in range(8)]
    views = [f"view-{i}" for i in range(4)]
    await asyncio.gather(
        *(sn.prepare(k, parent, _labels()) for k in actives),
        *(sn.view(k, parent, _labels()) for k in views),
    )
    children = await _walk(sn, f"parent=={parent}")
    _eq(set(children), set(actives + views), "children of the parent")
    if subject.can_mount:
        for key in actives + views:
            async with _mounted(subject, await sn.mounts(key)) as target:
                text = await asyncio.to_thread((target / "shared").read_bytes)
                _eq(text, b"from the parent", f"parent's file seen by {key}")

    results = await asyncio.gather(
        *(sn.prepare("raced", parent, _labels()) for _ in range(8)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, AlreadyExists)]
    _eq((len(won), len(lost)), (1, 7), "winners and AlreadyExists losers of a raced key")

    await asyncio.gather(*(sn.commit(f"committed-{k}", k, _labels()) for k in actives))
    await asyncio.gather(*(sn.remove(k) for k in views))
    committed = await _walk(sn, "kind==committed")
    _eq(set(committed), {parent} | {f"committed-{k}" for k in actives}, "committed snapshots")


def _user_xattrs_work(directory: Path) -> bool:
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        os.setxattr(fd, "user.pycontainerd-probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        os.close(fd)
        os.unlink(path)
    return True


@_case(needs_mount=True)
async def check_metadata_preserved_in_children(subject: Subject) -> None:
    """A child sees its parent's special files exactly: symlinks, hard links, fifos,
    device nodes (as root), set-id bits, owners, xattrs and mtimes."""
    sn = subject.snapshotter
    specials = [
        create_dir("/d", 0o750),
        create_file("/d/setuid", b"#!/bin/sh\n", 0o755),
        chown("/d/setuid", 3, 4),
        chmod("/d/setuid", 0o4755),  # after chown, which clears set-id bits
        create_file("/d/linked", b"shared inode", 0o640),
        link("/d/linked", "/other-name"),
        symlink("../other-name", "/d/relative-link"),
        symlink("/nowhere/at/all", "/dangling"),
        mknod("/fifo", stat.S_IFIFO | 0o620),
        chtimes("/d/setuid", 1_000_000_000_000_000_000, 1_100_000_000_000_000_000),
        chtimes("/d", 1_000_000_000_000_000_000, 1_200_000_000_000_000_000),
        chtimes("/dangling", 1_000_000_000_000_000_000, 1_300_000_000_000_000_000),
    ]
    if os.geteuid() == 0:
        specials.append(mknod("/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    if await asyncio.to_thread(_user_xattrs_work, subject.work):
        specials.append(set_xattr("/d/linked", "user.pycontainerd", b"kept"))
    name = await _create_snapshot(subject, "", apply(*specials))
    async with (
        _mounted(subject, await sn.view("parent-view", name, _labels())) as parent_view,
        _mounted(subject, await sn.prepare("child", name, _labels())) as child,
    ):
        await _check_equal(parent_view, child, times=True)
        entries = await asyncio.to_thread(manifest, child)
        _eq(entries["/d/linked"].links, ("/other-name",), "hard links of /d/linked")
        _eq(entries["/d/setuid"].mode, 0o4755, "mode of the set-uid file")


@_case(needs_layout=True)
async def check_cleanup_removes_orphans(subject: Subject) -> None:
    """Cleanup deletes directories no snapshot owns (crash leftovers, removed
    snapshots) and keeps every live snapshot's data."""
    assert subject.root is not None
    sn = subject.snapshotter
    snapshots_dir = subject.root / "snapshots"
    await sn.prepare("kept-a", "", _labels())
    if subject.can_mount:
        async with _mounted(subject, await sn.mounts("kept-a")) as target:
            await _apply_to(target, create_file("/keep", b"keep me", 0o644))
    await sn.commit("kept", "kept-a", _labels())
    await sn.prepare("kept-active", "kept", _labels())
    await sn.prepare("gone-a", "", _labels())
    await sn.commit("gone", "gone-a", _labels())
    await sn.remove("gone")

    def plant() -> None:
        for name in ("orphan-dir", "new-leftover", "rm-999999", "999999"):
            (snapshots_dir / name / "fs").mkdir(parents=True)
            (snapshots_dir / name / "fs" / "junk").write_bytes(b"junk")

    await asyncio.to_thread(plant)
    await sn.cleanup()
    left = set(await asyncio.to_thread(os.listdir, snapshots_dir))
    _eq(len(left), 2, f"directories left after cleanup ({sorted(left)})")
    _check(not left & {"orphan-dir", "new-leftover", "rm-999999", "999999"}, "orphans kept")
    if subject.can_mount:
        async with _mounted(subject, await sn.mounts("kept-active")) as target:
            data = await asyncio.to_thread((target / "keep").read_bytes)
            _eq(data, b"keep me", "data of a live snapshot after cleanup")
    await sn.cleanup()
    _eq(set(await asyncio.to_thread(os.listdir, snapshots_dir)), left, "second cleanup")


@_case(needs_layout=True)
async def check_failed_create_leaves_nothing(subject: Subject) -> None:
    """A prepare or view that fails leaves no directory behind."""
    assert subject.root is not None
    sn = subject.snapshotter
    snapshots_dir = subject.root / "snapshots"
    await sn.prepare("taken", "", _labels())
    before = set(await asyncio.to_thread(os.listdir, snapshots_dir))
    await _raises(AlreadyExists, sn.prepare("taken", ""), "prepare on a taken key")
    await _raises(AlreadyExists, sn.view("taken", ""), "view on a taken key")
    await _raises(NotFound, sn.prepare("x", "missing"), "prepare on a missing parent")
    await _raises(InvalidArgument, sn.prepare("x", "taken"), "prepare on an active parent")
    _eq(set(await asyncio.to_thread(os.listdir, snapshots_dir)), before, "directories")
