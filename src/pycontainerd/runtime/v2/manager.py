"""The shim manager: start, find, reconnect and clean up shims (runtime/v2/manager.go).

Tasks are kept per (namespace, id). Creating a task makes its bundle, starts the shim
binary there, connects to the address it prints, and asks it to create the task; any
failure undoes what was done. When a shim's connection drops without the daemon asking
(the shim died), ``<shim> delete`` cleans up after it, the bundle is removed, and
``/tasks/exit`` and ``/tasks/delete`` are published with the status the delete
reported (255 if it could not run), as containerd does.

``ctr shim --id ID`` (containerd 1.6) does not read the bundle: it dials
``/run/containerd/s/<sha256(<daemon address>/<ns>/<id>)>``. Our shim serves from
``<state>/s`` (a socket per daemon), so for each task the manager keeps a symlink at
that path to the shim's socket; the hash includes our address, so no other daemon
uses it.

On start-up every bundle under ``<state>/<ns>/`` is visited: a shim that answers on the
address in its bundle is adopted (its tasks keep running across daemon restarts);
for one that does not, ``<shim> delete`` runs and the bundle goes. Work directories
with no live task are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Protocol

from google.protobuf import any_pb2

from pycontainerd import namespaces
from pycontainerd._api.containerd.events import task_pb2 as events_pb
from pycontainerd.errdefs import (
    AlreadyExists,
    ContainerdError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unknown,
)
from pycontainerd.events.exchange import Exchange
from pycontainerd.identifiers import go_quote
from pycontainerd.runtime import CreateOpts, Exit
from pycontainerd.runtime.v2 import bundle as bundlemod
from pycontainerd.runtime.v2 import options as optionsmod
from pycontainerd.runtime.v2.binary import ShimBinary, binary_name, parse_address
from pycontainerd.runtime.v2.bundle import Bundle
from pycontainerd.runtime.v2.shim import LOAD_TIMEOUT, ShimLog, ShimTask
from pycontainerd.services.timestamps import to_pb
from pycontainerd.ttrpc.client import Client

logger = logging.getLogger(__name__)

TASK_EXIT_TOPIC = "/tasks/exit"
TASK_DELETE_TOPIC = "/tasks/delete"
# containerd reports a task whose shim died without telling us how as exit 255.
UNKNOWN_EXIT_STATUS = 255
REMOVAL_WAIT = 10.0
# Where ``ctr shim`` (containerd 1.6's cmd/ctr/commands/shim) looks for a task's shim.
CTR_SHIM_SOCKET_DIR = Path("/run/containerd/s")

ContainerRuntime = Callable[[str, str], Awaitable[str]]
"""(namespace, container id) -> the container's runtime name; raises NotFound."""


def find_executable(name: str) -> str | None:
    """An executable ``name``: an absolute path as is, otherwise next to the running
    Python's scripts (our virtualenv's console scripts) first, then on PATH."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) and os.path.isfile(name) else None
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK) and beside.is_file():
        return str(beside)
    return shutil.which(name)


class ShimManager:
    """Runtime v2: tasks served by shims. Methods use the caller's namespace."""

    def __init__(
        self,
        *,
        root: Path,
        state: Path,
        address: str,
        ttrpc_address: str,
        publish_binary: str,
        events: Exchange,
        runtimes: Mapping[str, str] | None = None,
        runtime_options: Mapping[str, any_pb2.Any] | None = None,
        container_runtime: ContainerRuntime | None = None,
        debug: bool = False,
        ctr_shim_dir: Path | None = None,
        shim_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.state = state
        self._address = address
        self._ttrpc_address = ttrpc_address
        self._publish_binary = publish_binary
        self._events = events
        self._runtimes = dict(runtimes or {})
        self._runtime_options = dict(runtime_options or {})
        self._container_runtime = container_runtime
        self._debug = debug
        self._shim_env = tuple((shim_env or {}).items())
        self._ctr_shim_dir = ctr_shim_dir  # None: no links (tests, other layouts)
        self._tasks: dict[tuple[str, str], ShimTask] = {}
        self._reserved: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._removals: set[asyncio.Task[None]] = set()  # of deleted bundles: awaited at close

    # -- runtime names ---------------------------------------------------------------

    def resolve_runtime_path(self, runtime: str) -> str:
        """The shim binary for a runtime name or path.

        A name configured in ``runtimes`` maps to its binary; otherwise, as containerd:
        an absolute path is used as is, and ``io.containerd.X.vN`` is
        ``containerd-shim-X-vN`` (looked up beside our own scripts, then on PATH).

        Raises:
            InvalidArgument: an empty or malformed name.
            NotFound: a configured binary or an absolute path does not exist.
            Unknown: no shim binary for the name is installed (as containerd answers).
        """
        if not runtime:
            raise InvalidArgument("no runtime name")
        configured = self._runtimes.get(runtime)
        if configured:
            found = find_executable(configured)
            if found is None:
                raise NotFound(
                    f"runtime {go_quote(runtime)}: configured shim binary "
                    f"{go_quote(configured)} not found"
                )
            return found
        if os.path.isabs(runtime):
            if not os.path.exists(runtime):
                raise NotFound(f"invalid custom binary path: {runtime}")
            return runtime
        name = binary_name(runtime)
        if not name:
            raise InvalidArgument(
                f"invalid runtime name {runtime}, correct runtime name should be either "
                "format like `io.containerd.runc.v1` or a full path to the binary"
            )
        found = find_executable(name)
        if found is None:
            # containerd wraps os.ErrNotExist here, which reaches clients as unknown
            raise Unknown(
                f"runtime {go_quote(runtime)} binary not installed {go_quote(name)}: "
                "file does not exist"
            )
        return found

    def _binary(self, bundle: Bundle, path: str) -> ShimBinary:
        return ShimBinary(
            path=path,
            id=bundle.id,
            namespace=bundle.namespace,
            bundle=bundle.path,
            address=self._address,
            ttrpc_address=self._ttrpc_address,
            publish_binary=self._publish_binary,
            debug=self._debug,
            extra_env=self._shim_env,
        )

    # -- tasks -----------------------------------------------------------------------

    def get(self, id_: str) -> ShimTask:
        """The task ``id_`` in the current namespace.

        Raises:
            NotFound: there is no such task.
        """
        ns = namespaces.required()
        task = self._tasks.get((ns, id_))
        if task is None:
            raise NotFound(f"task {id_}")
        return task

    def tasks(self, all_namespaces: bool = False) -> list[ShimTask]:
        """The tasks of the current namespace (or of every namespace)."""
        if all_namespaces:
            return list(self._tasks.values())
        ns = namespaces.required()
        return [t for (tns, _), t in self._tasks.items() if tns == ns]

    async def create(self, id_: str, opts: CreateOpts) -> tuple[ShimTask, int]:
        """Start a shim for a new task and create the task in it.

        Returns the task and its init pid. On failure the shim is told to go away and
        the bundle is removed.

        Raises:
            AlreadyExists: a task with this id exists in the namespace.
            InvalidArgument / NotFound / Unknown: a bad id, spec or runtime name.
            what the shim answers (runc's error for a bad spec, for example).
        """
        ns = namespaces.required()
        key = (ns, id_)
        if key in self._tasks or key in self._reserved:
            raise AlreadyExists(f"task {id_}")
        self._reserved.add(key)
        try:
            return await self._create(ns, id_, opts)
        finally:
            self._reserved.discard(key)

    async def _create(self, ns: str, id_: str, opts: CreateOpts) -> tuple[ShimTask, int]:
        try:
            shim_path = self.resolve_runtime_path(opts.runtime)
        except ContainerdError as exc:
            raise type(exc)(
                f"failed to start shim: failed to resolve runtime path: {exc.message}"
            ) from exc
        default_options = self._runtime_options.get(opts.runtime)
        if default_options is not None:
            merged = optionsmod.merge(default_options, opts.options)
            opts = dataclasses.replace(opts, task_options=merged)
        try:
            bundle = await asyncio.to_thread(self._new_bundle, ns, id_, opts.spec, shim_path)
        except FileExistsError as exc:
            raise AlreadyExists(f"task {id_}: bundle {exc.filename} exists") from exc
        task: ShimTask | None = None
        try:
            task = await self._start_shim(bundle, shim_path, opts)
            self._tasks[(ns, id_)] = task
            pid = await task.create(opts)
        except BaseException as exc:
            self._tasks.pop((ns, id_), None)
            await self._undo_create(bundle, task)
            if isinstance(exc, ContainerdError) and task is not None:
                raise type(exc)(f"failed to create shim task: {exc.message}") from exc
            raise
        return task, pid

    def _new_bundle(self, ns: str, id_: str, spec: bytes, shim_path: str) -> Bundle:
        """The task's bundle, naming the shim binary that will serve it (a restarted
        daemon runs that binary's ``delete`` if the shim is gone)."""
        bundle = bundlemod.new_bundle(self.root, self.state, ns, id_, spec)
        try:
            bundle.shim_binary_file.write_text(shim_path)
        except BaseException:
            bundle.delete()
            raise
        return bundle

    async def _start_shim(self, bundle: Bundle, shim_path: str, opts: CreateOpts) -> ShimTask:
        binary = self._binary(bundle, shim_path)
        log = ShimLog(bundle)
        log.open()
        try:
            address = await binary.start(opts.options)
            try:
                client = await Client.connect(address.path)
            except ContainerdError as exc:
                # name the shim: the address is all the user would see otherwise
                raise type(exc)(f"{shim_path} start: {exc.message}") from exc
        except ContainerdError as exc:
            log.close()
            raise type(exc)(f"failed to start shim: {exc.message}") from exc
        except BaseException:
            log.close()
            raise
        task = ShimTask(bundle, client, binary, log, self._shim_lost)
        # A symlink in a directory that exists: inline, a thread hop costs more.
        self._link_for_ctr_shim(bundle, address.path)
        return task

    def _ctr_shim_link(self, bundle: Bundle) -> Path | None:
        if self._ctr_shim_dir is None:
            return None
        key = os.path.join(self._address, bundle.namespace, bundle.id)
        return self._ctr_shim_dir / hashlib.sha256(key.encode()).hexdigest()

    def _link_for_ctr_shim(self, bundle: Bundle, socket: str) -> None:
        """Best effort: a shim that put its socket there already (a Go shim) needs none,
        and a machine without /run/containerd loses only ``ctr shim``."""
        link = self._ctr_shim_link(bundle)
        if link is None or str(link) == socket:
            return
        try:
            link.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            if link.is_symlink():
                link.unlink()
            link.symlink_to(socket)
        except FileExistsError:
            pass  # a real socket: some shim serves there itself
        except OSError as exc:
            logger.warning("task %s/%s: no ctr shim link: %s", bundle.namespace, bundle.id, exc)

    async def _remove_bundle(self, bundle: Bundle) -> None:
        """The task's bundle and its ``ctr shim`` link go (in one trip to a thread); the
        bundle's directories are renamed aside and their contents removed in the
        background: a deleted task's caller need not wait for a dozen unlinks."""

        def detach() -> list[Path]:
            self._unlink_for_ctr_shim(bundle)
            try:
                return bundle.detach()
            except OSError:
                logger.exception("removing bundle %s", bundle.path)
                return []

        detached = await asyncio.to_thread(detach)
        if detached:
            removal = self._in_background(self._remove_detached(detached))
            self._removals.add(removal)
            removal.add_done_callback(self._removals.discard)

    @staticmethod
    async def _remove_detached(paths: list[Path]) -> None:
        try:
            await asyncio.to_thread(bundlemod.remove_detached, paths)
        except OSError:
            logger.exception("removing deleted bundle %s", paths[0])

    def _in_background(self, job: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _unlink_for_ctr_shim(self, bundle: Bundle) -> None:
        link = self._ctr_shim_link(bundle)
        if link is None:
            return
        with contextlib.suppress(OSError):
            if link.is_symlink():
                link.unlink()

    async def _undo_create(self, bundle: Bundle, task: ShimTask | None) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                if task is not None:
                    with contextlib.suppress(ContainerdError):
                        await task.delete_process()
                    await task.shutdown()
                    await task.close()
        await self._remove_bundle(bundle)

    async def delete(self, id_: str) -> Exit:
        """Delete a stopped task, stop its shim and remove its bundle.

        Raises:
            NotFound: no such task.
            FailedPrecondition (from the shim): the task is still running.
        """
        task = self.get(id_)
        key = (task.namespace, task.id)
        shim_error: ContainerdError | None = None
        exit_: Exit | None = None
        try:
            exit_ = await task.delete_process()
        except (NotFound, Unavailable) as exc:
            shim_error = exc  # the shim is gone or forgot the task: clean up anyway
        self._tasks.pop(key, None)
        await task.shutdown()
        await task.close()
        await self._remove_bundle(task.bundle)
        if exit_ is None:
            assert shim_error is not None
            raise shim_error
        return exit_

    # -- dead shims ------------------------------------------------------------------

    def _shim_lost(self, task: ShimTask) -> None:
        self._in_background(self._cleanup_after_dead_shim(task))

    async def _cleanup_after_dead_shim(self, task: _ShimRef) -> None:
        ns, id_ = task.namespace, task.id
        logger.warning("cleaning up after shim disconnected: %s/%s", ns, id_)
        exit_: Exit | None = None
        try:
            exit_ = await task.binary.delete()
        except (ContainerdError, OSError, TimeoutError) as exc:
            logger.warning("failed to clean up after shim %s/%s: %s", ns, id_, exc)
        await self._remove_bundle(task.bundle)
        if self._tasks.get((ns, id_)) is not task:
            return  # deleted on purpose meanwhile, or never listed
        del self._tasks[(ns, id_)]
        if exit_ is None:
            exit_ = Exit(pid=0, status=UNKNOWN_EXIT_STATUS, timestamp_ns=_now_ns())
        exited_at = to_pb(exit_.timestamp_ns or _now_ns())
        with namespaces.with_namespace(ns):
            await self._events.publish(
                TASK_EXIT_TOPIC,
                events_pb.TaskExit(
                    container_id=id_,
                    id=id_,
                    pid=exit_.pid,
                    exit_status=exit_.status,
                    exited_at=exited_at,
                ),
            )
            await self._events.publish(
                TASK_DELETE_TOPIC,
                events_pb.TaskDelete(
                    container_id=id_,
                    pid=exit_.pid,
                    exit_status=exit_.status,
                    exited_at=exited_at,
                ),
            )

    # -- start-up --------------------------------------------------------------------

    async def load_existing(self) -> None:
        """Adopt the shims of a previous daemon; clean up after the dead ones."""
        for ns_dir in await asyncio.to_thread(_subdirs, self.state):
            ns = ns_dir.name
            with namespaces.with_namespace(ns):
                for task_dir in await asyncio.to_thread(_subdirs, ns_dir):
                    try:
                        await self._load_shim(ns, task_dir.name)
                    except Exception:
                        logger.exception("loading task %s/%s", ns, task_dir.name)
                await asyncio.to_thread(self._cleanup_work_dirs, ns)
                await asyncio.to_thread(bundlemod.remove_leftovers, ns_dir)

    async def _load_shim(self, ns: str, id_: str) -> None:
        bundle = bundlemod.load_bundle(self.state, ns, id_)
        if not await asyncio.to_thread(lambda: any(bundle.path.iterdir())):
            await asyncio.to_thread(bundle.delete)
            return
        runtime = ""
        with contextlib.suppress(FileNotFoundError):
            runtime = (await asyncio.to_thread(bundle.shim_binary_file.read_text)).strip()
        if not runtime and self._container_runtime is not None:
            with contextlib.suppress(NotFound):
                runtime = await self._container_runtime(ns, id_)
        try:
            shim_path = self.resolve_runtime_path(runtime)
        except ContainerdError as exc:
            logger.error("task %s/%s: cannot resolve its shim (%s); removing bundle", ns, id_, exc)
            await asyncio.to_thread(bundle.delete)
            return
        binary = self._binary(bundle, shim_path)
        client: Client | None = None
        log: ShimLog | None = None
        task: ShimTask | None = None
        try:
            text = await asyncio.to_thread(bundle.address_file.read_text)
            address = parse_address(text)
            async with asyncio.timeout(LOAD_TIMEOUT):
                client = await Client.connect(address.path)
                log = ShimLog(bundle)
                log.open()
                task = ShimTask(bundle, client, binary, log, self._shim_lost)
                await task.connect()
        except (ContainerdError, OSError, TimeoutError) as exc:
            logger.info("shim of task %s/%s is gone (%s): cleaning up", ns, id_, exc)
            if task is not None:
                await task.close()
            else:
                if log is not None:
                    log.close()
                if client is not None:
                    await client.close()
            await self._cleanup_after_dead_shim(_Dead(bundle, binary))
            return
        self._tasks[(ns, id_)] = task
        await asyncio.to_thread(self._link_for_ctr_shim, bundle, address.path)
        logger.info("reconnected to shim of task %s/%s", ns, id_)

    def _cleanup_work_dirs(self, ns: str) -> None:
        work_root = self.root / ns
        for work in _subdirs(work_root, include_hidden=True):
            if (ns, work.name) not in self._tasks:
                shutil.rmtree(work, ignore_errors=True)

    # -- shutdown --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Disconnect from every shim; the shims and their tasks keep running."""
        for task in list(self._tasks.values()):
            with contextlib.suppress(Exception):
                await task.close()
        self._tasks.clear()
        if self._removals:  # a few unlinks each; what is left is removed at the next start
            await asyncio.wait(self._removals, timeout=REMOVAL_WAIT)
        for job in list(self._background):
            job.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class _ShimRef(Protocol):
    """What the dead-shim clean-up needs: a ``ShimTask``, or a ``_Dead`` one."""

    @property
    def bundle(self) -> Bundle: ...
    @property
    def binary(self) -> ShimBinary: ...
    @property
    def namespace(self) -> str: ...
    @property
    def id(self) -> str: ...


class _Dead:
    """A shim we could not reconnect to."""

    def __init__(self, bundle: Bundle, binary: ShimBinary) -> None:
        self.bundle = bundle
        self.binary = binary
        self.namespace = bundle.namespace
        self.id = bundle.id


def _subdirs(path: Path, include_hidden: bool = False) -> list[Path]:
    try:
        entries = list(path.iterdir())
    except FileNotFoundError:
        return []
    return [
        e
        for e in entries
        if e.is_dir() and not e.is_symlink() and (include_hidden or not e.name.startswith("."))
    ]


def _now_ns() -> int:
    return time.time_ns()
