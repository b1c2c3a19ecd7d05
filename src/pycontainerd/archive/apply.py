"""Apply a layer tarball to a directory, executing :mod:`pycontainerd.sansio.tar` decisions.

The pipeline, all in the calling thread except the first box::

    stream --read/decompress/hash (prefetch thread)--> chunks --TarReader--> events
        --plan()--> Op --_Applier--> syscalls relative to directory fds

Safety does not rest on string paths. The root is opened once; every parent directory
is reached from it one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` after
:func:`~pycontainerd.sansio.tar.resolve` has followed symlinks *inside* the root, and
every entry is created relative to its parent's fd (``O_CREAT | O_EXCL | O_NOFOLLOW``
after removing what was there). A symlink swapped in under our feet therefore makes
the walk fail instead of leading out of the root.

Metadata follows containerd's ``createTarFile``: ``lchown``, then xattrs, then
``chmod`` (chown clears setuid/setgid, so the mode goes last), then times. Directory
times are set at the very end, because creating entries in a directory changes its
mtime.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from pycontainerd import digests
from pycontainerd.archive import compression as _compression
from pycontainerd.errdefs import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unknown,
)
from pycontainerd.sansio import tar
from pycontainerd.sansio.tar import (
    ARCHIVE_END,
    ENTRY_END,
    NEED_DATA,
    OVERLAY_OPAQUE_XATTR,
    Attrs,
    CreateFile,
    Data,
    Hardlink,
    LayerError,
    Mkdir,
    Mknod,
    Op,
    Opaque,
    Skip,
    Symlink,
    TarHeader,
    TarReader,
    Whiteout,
)

logger = logging.getLogger(__name__)

WhiteoutMode = Literal["overlay", "delete"]

_CHUNK = 1 << 20
_PREFETCH_DEPTH = 8
_DIR_FD_CACHE = 128
_MAX_WARNINGS = 100
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# errnos that mean "the layer asks for something this tree cannot hold", reported as
# LayerError (invalid argument) rather than as an I/O failure of the host.
_LAYER_ERRNOS = frozenset(
    {
        errno.ENOTDIR,
        errno.ELOOP,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENOENT,
        errno.ENAMETOOLONG,
        errno.EMLINK,
        errno.EXDEV,
        errno.EINVAL,
        errno.ENOTEMPTY,
    }
)
_NOT_SUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


class DiffIdMismatch(FailedPrecondition):
    """The uncompressed layer does not hash to the diff id it was expected to have."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"layer diff id {actual} does not match expected {expected}")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :func:`apply_layer` read and did.

    ``diff_id`` is the digest of the uncompressed tar stream, ``size`` its length in
    bytes (containerd's applied descriptor). ``warnings`` lists what was deliberately
    not applied (device nodes without privilege, xattrs a layer may not set, ...).
    """

    diff_id: str
    size: int
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# Reading: decompress and hash off the applying thread
# ---------------------------------------------------------------------------


_END = object()


class _LayerStream:
    """Read, decompress and hash a layer in a helper thread, handing chunks over.

    Decompression and sha256 release the GIL, so they overlap with the file system
    work of the applying thread. The queue is bounded: memory stays at about
    ``_PREFETCH_DEPTH`` chunks whatever the layer size.
    """

    def __init__(
        self,
        raw: _compression.Readable,
        compression: _compression.Compression | None,
        algorithm: str,
        *,
        threaded: bool = True,
    ) -> None:
        self._raw = raw
        self._compression = compression
        self._hash = digests.hasher(algorithm)
        self._algorithm = algorithm
        self.size = 0
        self._threaded = threaded
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_PREFETCH_DEPTH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = False

    def __enter__(self) -> _LayerStream:
        if self._threaded:
            self._thread = threading.Thread(
                target=self._produce, name="layer-decompress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            # Unblock a producer waiting on a full queue, then wait for it.
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            self._thread.join()

    def _chunks_inline(self) -> Iterator[bytes]:
        reader = _compression.open_layer(self._raw, self._compression)
        while data := reader.read(_CHUNK):
            self._hash.update(data)
            self.size += len(data)
            yield data

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for data in self._chunks_inline():
                if not self._put(data):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def chunks(self) -> Iterator[bytes]:
        """Uncompressed chunks until the end of the stream.

        Raises:
            TruncatedLayer, LayerError: from decompression.
            OSError: reading the raw stream failed.
        """
        if self._done:
            return
        if not self._threaded:
            yield from self._chunks_inline()
            self._done = True
            return
        while True:
            item = self._queue.get()
            if item is _END:
                self._done = True
                return
            if isinstance(item, BaseException):
                self._done = True
                raise item
            assert isinstance(item, bytes)
            yield item

    def drain(self) -> None:
        """Read (and hash) what is left, as containerd does after the tar ends."""
        for _ in self.chunks():
            pass

    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"


# ---------------------------------------------------------------------------
# Executing decisions
# ---------------------------------------------------------------------------


def _proc_fd(fd: int, name: str | None = None) -> str:
    """A path naming an open fd (or an entry in the directory it is open on)."""
    return f"/proc/self/fd/{fd}" if name is None else f"/proc/self/fd/{fd}/{name}"


class _Applier:
    """Executes ops inside ``root``; one instance per layer, used by one thread."""

    def __init__(self, root: Path, mode: WhiteoutMode, parents: Sequence[Path]) -> None:
        self._mode = mode
        self._parents = [str(p) for p in parents]
        try:
            self._root_fd = os.open(root, _O_DIR)
        except FileNotFoundError as exc:
            raise NotFound(f"layer root {str(root)!r}") from exc
        except NotADirectoryError as exc:
            raise InvalidArgument(f"layer root {str(root)!r} is not a directory") from exc
        self._rootless = os.geteuid() != 0
        # Directory fds by resolved relative path, least recently used first.
        self._fds: OrderedDict[str, int] = OrderedDict()
        # Cleaned parent path -> resolved path, and paths known to be real directories.
        self._resolved: dict[str, str] = {}
        self._known_dirs: set[str] = set()
        # Resolved paths this layer created: an opaque marker in "delete" mode keeps them.
        self._unpacked: set[str] = set()
        # (resolved path, atime, mtime) of directories, applied last.
        self._dir_times: list[tuple[str, int, int]] = []
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        # The regular file being written, if any.
        self._file_fd = -1
        self._file_op: CreateFile | None = None

    # -- bookkeeping -------------------------------------------------------

    def close(self) -> None:
        if self._file_fd >= 0:
            os.close(self._file_fd)
            self._file_fd = -1
        self._invalidate()
        os.close(self._root_fd)

    def _warn(self, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        logger.warning("%s", message)
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)

    def _invalidate(self, keep: int = -1) -> None:
        """Forget cached resolutions: a directory or symlink in the tree went away.

        ``keep`` is the fd of the directory the removal happened in: the caller is
        still using it, and it stays valid because only a child of it changed.
        """
        kept = OrderedDict((rel, fd) for rel, fd in self._fds.items() if fd == keep)
        for fd in self._fds.values():
            if fd != keep:
                os.close(fd)
        self._fds = kept
        self._resolved.clear()
        self._known_dirs = set(kept)

    def _readlink(self, rel: str) -> str | None:
        if rel in self._known_dirs:
            return None
        try:
            return os.readlink(rel, dir_fd=self._root_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENOTDIR):
                return None
            raise

    def _dir_fd(self, rel: str, *, create: bool, entry: str) -> int:
        """An fd for the directory at resolved path ``rel``, made (0755) if missing.

        Raises:
            LayerError: a component is not a directory (or is a symlink, which
                resolution should have followed: the tree changed under us).
            FileNotFoundError: missing and ``create`` is False.
        """
        if not rel:
            return self._root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        # Iterative (a layer may nest thousands deep): from the deepest cached
        # ancestor, open (or make) one component at a time.
        parts = rel.split("/")
        start = len(parts) - 1
        while start > 0 and "/".join(parts[:start]) not in self._fds:
            start -= 1
        if start:
            prefix = "/".join(parts[:start])
            fd = self._fds[prefix]
            self._fds.move_to_end(prefix)
        else:
            prefix, fd = "", self._root_fd
        for base in parts[start:]:
            prefix = f"{prefix}/{base}" if prefix else base
            fd = self._open_child(fd, base, prefix, create=create, entry=entry)
        return fd

    def _open_child(self, pfd: int, base: str, rel: str, *, create: bool, entry: str) -> int:
        created = False
        try:
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(base, 0o755, dir_fd=pfd)
                created = True
            except FileExistsError:
                pass
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise LayerError(f"entry {entry!r}: {rel!r} is not a directory") from exc
            raise
        self._fds[rel] = fd
        self._known_dirs.add(rel)
        if created:
            self._implicit_dir(fd, rel)
        if len(self._fds) > _DIR_FD_CACHE:
            # The oldest entry, never the fd just added (nor its parent, used last).
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def _implicit_dir(self, fd: int, rel: str) -> None:
        """Give a directory the layer did not list the attributes it has below.

        containerd's mkparent: 0755 (ignoring the umask), unless a parent layer (given
        for overlay upper dirs, top first) has a directory there, whose owner, mode,
        times and non-trusted xattrs are copied, so the upper dir does not mask them.
        """
        for lower in self._parents:
            try:
                real = tar.resolve(rel, functools.partial(_lower_readlink, lower))
                st = os.lstat(os.path.join(lower, real))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # replaced by a non-directory below: no attributes to inherit
            self._chown(fd, None, st.st_uid, st.st_gid, f"{rel}/")
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            _copy_xattrs(os.path.join(lower, real), fd)
            self._dir_times.append((rel, st.st_atime_ns, st.st_mtime_ns))
            return
        os.fchmod(fd, 0o755)

    def _parent(self, path: str, entry: str, *, create: bool = True) -> tuple[int, str, str]:
        """Resolve the parent of cleaned ``path`` inside the root.

        Returns:
            (parent fd, resolved path of the entry itself, base name).
        """
        parent, base = tar.split_path(path)
        resolved = self._resolved.get(parent)
        if resolved is None:
            resolved = self._resolve(parent, entry)
            fd = self._dir_fd(resolved, create=create, entry=entry)
            # Cached only once it exists as a real directory: a path that is missing
            # now may become a symlink later in the layer without anything being
            # removed (which is what invalidates the cache).
            self._resolved[parent] = resolved
        else:
            fd = self._dir_fd(resolved, create=create, entry=entry)
        return fd, tar.join_path(resolved, base), base

    def _resolve(self, path: str, entry: str) -> str:
        try:
            return tar.resolve(path, self._readlink)
        except LayerError as exc:
            raise LayerError(f"entry {entry!r}: {exc.message}") from exc

    def _remove(self, pfd: int, base: str) -> bool:
        """Remove whatever is at ``base`` (never following it). False if nothing was."""
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            self._invalidate(keep=pfd)
            _rmtree_at(pfd, base)
        else:
            if stat.S_ISLNK(st.st_mode):
                self._invalidate(keep=pfd)
            os.unlink(base, dir_fd=pfd)
        return True

    # -- metadata ----------------------------------------------------------

    def _chown(self, fd: int, name: str | None, uid: int, gid: int, entry: str) -> None:
        """lchown (of ``name`` in dir ``fd``, or of ``fd`` itself when name is None)."""
        try:
            if name is None:
                os.fchown(fd, uid, gid)
            else:
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            # Without privilege (tests, rootless use) ownership cannot be kept; say so
            # once instead of refusing every layer that is not owned by us.
            if self._rootless and exc.errno in (errno.EPERM, errno.EINVAL):
                self._warn("ownership not preserved: not running as root")
                return
            raise

    def _set_xattrs(self, target: int | str, attrs: Attrs, entry: str, plain: bool) -> None:
        """Set xattrs on an fd, or on a path that is not followed.

        ``plain`` says the node is a regular file or a directory, the only kinds that
        may carry ``user.*`` attributes.
        """
        for key in attrs.ignored_xattrs:
            self._warn(f"xattr {key} ignored: admin attributes from a layer are not applied")
        for key, value in attrs.xattrs:
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _NOT_SUPPORTED:
                    self._warn(f"xattr {key} ignored: not supported here")
                    continue
                if exc.errno == errno.EPERM and key.startswith("user.") and not plain:
                    continue  # xattr(7): user.* only on regular files and directories
                if exc.errno == errno.EPERM and self._rootless:
                    self._warn(f"xattr {key} ignored: not running as root")
                    continue
                raise

    def _finish_node(self, pfd: int, base: str, attrs: Attrs, entry: str) -> None:
        """Metadata of a just-made non-regular, non-directory node (or hardlink)."""
        st = os.lstat(base, dir_fd=pfd)
        self._chown(pfd, base, attrs.uid, attrs.gid, entry)
        times = (attrs.atime_ns, attrs.mtime_ns)
        if stat.S_ISLNK(st.st_mode):
            # Symlinks have no mode of their own on Linux; xattrs go on the link.
            self._set_xattrs(_proc_fd(pfd, base), attrs, entry, plain=False)
            os.utime(base, ns=times, dir_fd=pfd, follow_symlinks=False)
            return
        # An O_PATH fd pins the node itself; /proc/self/fd/N then names exactly it, so
        # chmod cannot be redirected even though chmod(2) follows symlinks.
        node = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            plain = stat.S_ISREG(st.st_mode)
            self._set_xattrs(_proc_fd(node), attrs, entry, plain=plain)
            os.chmod(_proc_fd(node), attrs.mode)
            os.utime(_proc_fd(node), ns=times)
        finally:
            os.close(node)

    # -- ops ---------------------------------------------------------------

    def begin(self, op: Op) -> None:
        """Start executing ``op``; a CreateFile then receives :meth:`write` calls.

        Raises:
            LayerError: the layer asks for something impossible or unsafe.
            ContainerdError: any other failure, naming the entry.
        """
        try:
            self._begin(op)
        except ContainerdError:
            raise
        except OSError as exc:
            raise _os_error(op.name, exc) from exc

    def _begin(self, op: Op) -> None:
        if isinstance(op, CreateFile):
            pfd, resolved, base = self._parent(op.path, op.name)
            try:
                fd = os.open(base, _O_NEWFILE, 0o600, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, base)
                fd = os.open(base, _O_NEWFILE, 0o600, dir_fd=pfd)
            self._file_fd, self._file_op = fd, op
            self._unpacked.add(resolved)
        elif isinstance(op, Mkdir):
            self._mkdir(op)
        elif isinstance(op, Symlink):
            pfd, resolved, base = self._parent(op.path, op.name)
            try:
                os.symlink(op.target, base, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, base)
                os.symlink(op.target, base, dir_fd=pfd)
            self._finish_node(pfd, base, op.attrs, op.name)
            self._unpacked.add(resolved)
        elif isinstance(op, Hardlink):
            self._hardlink(op)
        elif isinstance(op, Mknod):
            self._mknod(op)
        elif isinstance(op, Whiteout):
            self._whiteout(op)
        elif isinstance(op, Opaque):
            self._opaque(op)
        else:
            assert isinstance(op, Skip)
            logger.debug("layer entry %r skipped: %s", op.name, op.reason)

    def write(self, data: bytes) -> None:
        """Append data to the file being created (data of other entries is dropped)."""
        if self._file_fd < 0:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._file_fd, view)
                view = view[n:]
        except OSError as exc:
            assert self._file_op is not None
            raise _os_error(self._file_op.name, exc) from exc

    def end(self) -> None:
        """Finish the current entry (metadata of a regular file)."""
        op, fd = self._file_op, self._file_fd
        if op is None:
            return
        self._file_op, self._file_fd = None, -1
        try:
            attrs = op.attrs
            self._chown(fd, None, attrs.uid, attrs.gid, op.name)
            self._set_xattrs(fd, attrs, op.name, plain=True)
            os.fchmod(fd, attrs.mode)
            os.utime(fd, ns=(attrs.atime_ns, attrs.mtime_ns))
        except ContainerdError:
            raise
        except OSError as exc:
            raise _os_error(op.name, exc) from exc
        finally:
            os.close(fd)

    def _mkdir(self, op: Mkdir) -> None:
        pfd, resolved, base = self._parent(op.path, op.name)
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            # An existing directory is merged (only its metadata changes); anything
            # else is replaced, as in containerd.
            if not stat.S_ISDIR(os.lstat(base, dir_fd=pfd).st_mode):
                self._remove(pfd, base)
                os.mkdir(base, 0o700, dir_fd=pfd)
        fd = self._fds.get(resolved)
        if fd is None:
            fd = self._dir_fd(resolved, create=False, entry=op.name)
        attrs = op.attrs
        self._chown(fd, None, attrs.uid, attrs.gid, op.name)
        self._set_xattrs(fd, attrs, op.name, plain=True)
        os.fchmod(fd, attrs.mode)
        self._dir_times.append((resolved, attrs.atime_ns, attrs.mtime_ns))
        self._unpacked.add(resolved)

    def _hardlink(self, op: Hardlink) -> None:
        # The target's parents are resolved inside the root; its last component is
        # not followed, so a link to a symlink links the symlink (as containerd does).
        missing = f"entry {op.name!r}: hardlink target {op.target!r} does not exist"
        try:
            # A private duplicate: resolving the link's own parent may evict or
            # invalidate cached fds.
            tfd = os.dup(self._parent(op.target, op.name, create=False)[0])
        except FileNotFoundError as exc:
            raise LayerError(missing) from exc
        tbase = tar.split_path(op.target)[1]
        try:
            pfd, resolved, base = self._parent(op.path, op.name)
            try:
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                self._remove(pfd, base)
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise LayerError(missing) from exc
        except PermissionError as exc:
            raise LayerError(
                f"entry {op.name!r}: cannot hardlink to {op.target!r} (a directory?)"
            ) from exc
        finally:
            os.close(tfd)
        self._finish_node(pfd, base, op.attrs, op.name)
        self._unpacked.add(resolved)

    def _mknod(self, op: Mknod) -> None:
        kind = {"char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}[op.kind]
        device = op.kind != "fifo"
        if device and self._rootless:
            # containerd skips device nodes where it cannot make them (user namespaces).
            self._warn(f"device node {op.name!r} skipped: not running as root")
            return
        pfd, resolved, base = self._parent(op.path, op.name)
        self._remove(pfd, base)
        try:
            os.mknod(base, kind | op.attrs.mode, os.makedev(op.major, op.minor), dir_fd=pfd)
        except PermissionError:
            if not device:
                raise
            self._warn(f"device node {op.name!r} skipped: mknod not permitted")
            return
        self._finish_node(pfd, base, op.attrs, op.name)
        self._unpacked.add(resolved)

    def _whiteout(self, op: Whiteout) -> None:
        if self._mode == "overlay":
            # overlayfs' own whiteout: a 0/0 character device in the upper dir.
            pfd, _, base = self._parent(op.target, op.name)
            self._remove(pfd, base)
            os.mknod(base, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            self._chown(pfd, base, op.uid, op.gid, op.name)
            return
        try:
            # Unlike containerd we do not create missing parents just to delete nothing.
            pfd, _, base = self._parent(op.target, op.name, create=False)
        except FileNotFoundError:
            return
        self._remove(pfd, base)

    def _opaque(self, op: Opaque) -> None:
        if self._mode == "overlay":
            fd = self._dir_fd(self._resolve(op.dir, op.name), create=True, entry=op.name)
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        try:
            resolved = self._resolve(op.dir, op.name)
            self._dir_fd(resolved, create=False, entry=op.name)
        except FileNotFoundError:
            return
        # Depth first without recursion (layers nest deep). Only directories this
        # layer made are entered; everything else below them is from lower layers.
        stack = [resolved]
        while stack:
            rel = stack.pop()
            # A private duplicate: removals below invalidate the cached fds.
            fd = os.dup(self._dir_fd(rel, create=False, entry=op.name))
            try:
                with os.scandir(fd) as it:
                    names = [e.name for e in it]
                for name in names:
                    child = tar.join_path(rel, name)
                    if child not in self._unpacked:
                        self._remove(fd, name)
                    elif stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                        stack.append(child)
            finally:
                os.close(fd)

    def finish(self) -> None:
        """Set directory times last (creating entries in them changed their mtimes)."""
        for rel, atime, mtime in self._dir_times:
            try:
                fd = self._dir_fd(rel, create=False, entry=rel)
            except (FileNotFoundError, LayerError):
                continue  # replaced or removed later in the layer
            os.utime(fd, ns=(atime, mtime))


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return its subdirectories."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
        else:
            os.unlink(entry.name, dir_fd=fd)
    return subdirs


def _rmtree_at(pfd: int, name: str) -> None:
    """Remove the directory ``name`` in ``pfd`` and everything in it, never following.

    Unlike ``shutil.rmtree`` this neither recurses (a layer can nest thousands of
    directories deep) nor holds one fd per level (which would run out of fds): it
    holds one directory at a time and climbs back with ``..``, checking that ``..``
    is the directory it came from.
    """
    fd = os.open(name, _O_DIR, dir_fd=pfd)
    try:
        st = os.fstat(fd)
        ids = [(st.st_dev, st.st_ino)]
        names = [name]
        pending = [_clear_files(fd)]
        while True:
            if pending[-1]:
                sub = pending[-1].pop()
                try:
                    child = os.open(sub, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = child
                st = os.fstat(fd)
                ids.append((st.st_dev, st.st_ino))
                names.append(sub)
                pending.append(_clear_files(fd))
                continue
            if len(names) == 1:
                break
            parent = os.open("..", _O_DIR, dir_fd=fd)
            st = os.fstat(parent)
            os.close(fd)
            fd = parent
            if (st.st_dev, st.st_ino) != ids[-2]:
                raise OSError(errno.ESTALE, f"directory {names[-2]!r} moved while being removed")
            ids.pop()
            pending.pop()
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


def _lower_readlink(lower: str, rel: str) -> str | None:
    try:
        return os.readlink(os.path.join(lower, rel))
    except OSError:
        return None


def _copy_xattrs(src: str, fd: int) -> None:
    """Copy non-trusted xattrs without overwriting (containerd's copyUpXAttrs)."""
    try:
        keys = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED:
            return
        raise
    for key in keys:
        if key.startswith("trusted."):
            continue
        try:
            os.setxattr(fd, key, os.getxattr(src, key, follow_symlinks=False), os.XATTR_CREATE)
        except OSError as exc:
            if exc.errno not in (*_NOT_SUPPORTED, errno.ENODATA, errno.EEXIST):
                raise


def _os_error(entry: str, exc: OSError) -> ContainerdError:
    what = exc.strerror or str(exc)
    if exc.errno in _LAYER_ERRNOS:
        return LayerError(f"entry {entry!r}: {what}")
    return Unknown(f"apply layer entry {entry!r}: {what}")


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def apply_layer(
    root: Path,
    stream: BinaryIO,
    *,
    whiteout_mode: WhiteoutMode,
    media_type: str | None = None,
    expected_diff_id: str | None = None,
    parents: Sequence[Path] = (),
) -> ApplyResult:
    """Apply the layer read from ``stream`` to the directory ``root``. Blocking.

    Call it in a worker thread (``await asyncio.to_thread(apply_layer, ...)``).

    Args:
        root: an existing directory: an overlay upper dir ("overlay" mode) or a full
            tree holding the lower layers ("delete" mode, e.g. a native snapshot).
        stream: the layer blob, read sequentially to its end.
        whiteout_mode: "overlay" writes whiteouts as 0/0 character devices and opaque
            directories as ``trusted.overlay.opaque=y`` (needs root); "delete" removes
            the targets, and for an opaque directory every entry this layer did not
            add itself.
        media_type: the layer's media type; None detects the compression.
        expected_diff_id: when given, the digest the uncompressed stream must have.
        parents: for "overlay", the lower directories (top first); directories this
            layer creates implicitly copy their attributes from there.

    Returns:
        The diff id (digest of the uncompressed stream, in ``expected_diff_id``'s
        algorithm, else sha256) and the uncompressed size.

    Raises:
        InvalidArgument: an unknown media type or whiteout mode, a malformed
            ``expected_diff_id``; as :class:`~pycontainerd.sansio.tar.LayerError`, an
            unsafe or malformed entry (the message names it) or corrupt compression.
        TruncatedLayer: the stream ended early (a LayerError).
        DiffIdMismatch: the layer applied but its digest is not ``expected_diff_id``.
        Unknown: an I/O error of the host, naming the entry.

    On any error, ``root`` is left partly written. It is meant to be a fresh active
    snapshot that the caller removes on failure, as containerd's unpacker does;
    nothing is ever written outside ``root``. Cancelling the awaiting task does not
    stop the thread, which runs to the end or the first error.
    """
    if whiteout_mode not in ("overlay", "delete"):
        raise InvalidArgument(f"unknown whiteout mode {whiteout_mode!r}")
    algorithm = digests.CANONICAL
    if expected_diff_id is not None:
        algorithm, _ = digests.parse(expected_diff_id)
    compression = _compression.compression_for(media_type)
    applier = _Applier(root, whiteout_mode, parents)
    try:
        with _LayerStream(stream, compression, algorithm) as layer:
            reader = TarReader()
            chunks = layer.chunks()
            while True:
                try:
                    chunk = next(chunks, b"")
                except LayerError as exc:
                    # A decompression error: say which entry it cut short.
                    if reader.current is None:
                        raise
                    name = reader.current.name
                    raise type(exc)(f"{exc.message} in entry {name!r}") from exc
                reader.receive_data(chunk)
                if _drive(reader, applier) or not chunk:
                    break
            layer.drain()
            applier.finish()
        diff_id, size = layer.digest(), layer.size
    finally:
        applier.close()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DiffIdMismatch(expected_diff_id, diff_id)
    return ApplyResult(diff_id=diff_id, size=size, warnings=tuple(applier.warnings))


def _drive(reader: TarReader, applier: _Applier) -> bool:
    """Run the reader's events through the applier; True at the end of the archive."""
    while True:
        event = reader.next_event()
        if isinstance(event, Data):
            applier.write(event.data)
        elif isinstance(event, TarHeader):
            applier.begin(tar.plan(event))
        elif event is ENTRY_END:
            applier.end()
        elif event is NEED_DATA:
            return False
        else:
            assert event is ARCHIVE_END
            return True
