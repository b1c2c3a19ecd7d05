"""A task's bundle: the directory a shim runs in (containerd's runtime/v2/bundle.go).

Layout, for task ``id`` in namespace ``ns``::

    <state>/<ns>/<id>/            the bundle (0700): the shim's working directory
        config.json               the container's OCI spec, as stored
        rootfs/                   where the shim mounts the rootfs mounts it is given
        work -> <root>/<ns>/<id>  a persistent scratch directory for the shim
        address, shim.pid, log    written by the shim (log is a fifo we create and read)
        shim-binary-path          the shim binary, so a restarted daemon can run
                                  ``<shim> delete`` without the container record

Deletion unmounts whatever is left on rootfs, then renames each directory to a dot
name before removing it, so a crash mid-way never leaves a half bundle that looks
whole (the reload walk skips dot names).

Every function here blocks; the runtime calls them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from pycontainerd import identifiers
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.snapshots import mount as mountmod

CONFIG_FILENAME = "config.json"
SHIM_BINARY_PATH_FILENAME = "shim-binary-path"
ADDRESS_FILENAME = "address"
LOG_FILENAME = "log"


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    namespace: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def address_file(self) -> Path:
        return self.path / ADDRESS_FILENAME

    @property
    def log_fifo(self) -> Path:
        return self.path / LOG_FILENAME

    @property
    def shim_binary_file(self) -> Path:
        return self.path / SHIM_BINARY_PATH_FILENAME

    def delete(self) -> None:
        """Unmount rootfs and remove the bundle and its work directory.

        Raises:
            OSError: an unmount or removal failed; what could be removed is gone.
        """
        remove_detached(self.detach())

    def detach(self) -> list[Path]:
        """Unmount rootfs and move the bundle and its work directory to dot names (a
        rename each): the task's directories are gone at once, and the returned copies
        can be removed later (``remove_detached``).

        Raises:
            OSError: the unmount failed (nothing was moved).
        """
        try:
            work: str | None = os.readlink(self.path / "work")
        except OSError:
            work = None
        mountmod.unmount_all(self.rootfs)
        with contextlib.suppress(FileNotFoundError):
            self.rootfs.rmdir()
        detached = []
        for path in (self.path, Path(work) if work else None):
            if path is None:
                continue
            # Unique: an earlier deletion of the same id may still be under way.
            hidden = path.parent / f".{path.name}.{secrets.token_hex(4)}"
            try:
                path.rename(hidden)
            except FileNotFoundError:
                continue
            detached.append(hidden)
        return detached


def remove_detached(paths: list[Path]) -> None:
    """Raises the first OSError; what could be removed is gone."""
    errors: list[OSError] = []
    for path in paths:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def remove_leftovers(directory: Path) -> None:
    """Removes the dot-named directories that deletions interrupted by a crash left."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def remapped_gid(spec: bytes) -> int:
    """The host gid that container gid 0 maps to (0 without a user namespace).

    Raises:
        InvalidArgument: the spec is not a JSON object.
    """
    try:
        doc = json.loads(spec)
    except ValueError as exc:
        raise InvalidArgument(f"container spec is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("container spec is not a JSON object")
    linux = doc.get("linux") or {}
    for mapping in linux.get("gidMappings") or ():
        if mapping.get("containerID", 0) == 0:
            return int(mapping.get("hostID", 0))
    return 0


def load_bundle(state: Path, namespace: str, id_: str) -> Bundle:
    """The bundle of an existing task (nothing is checked on disk)."""
    return Bundle(id=id_, namespace=namespace, path=state / namespace / id_)


def new_bundle(root: Path, state: Path, namespace: str, id_: str, spec: bytes) -> Bundle:
    """Create the bundle for a new task, with ``spec`` as its config.json.

    On failure nothing is left behind.

    Raises:
        InvalidArgument: ``id_`` is not a valid identifier, or the spec is not JSON.
        FileExistsError: the bundle exists (a task with this id is running).
        OSError: the directories cannot be made.
    """
    try:
        identifiers.validate(id_)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid task id {id_}: {exc}") from exc
    gid = remapped_gid(spec)
    bundle = load_bundle(state, namespace, id_)
    work = root / namespace / id_
    made: list[Path] = []
    try:
        bundle.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        bundle.path.mkdir(mode=0o700)
        made.append(bundle.path)
        if gid:
            # The container's root group must reach the rootfs through the bundle.
            os.chown(bundle.path, -1, gid)
            bundle.path.chmod(0o710)
        bundle.rootfs.mkdir(mode=0o711)
        work.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        if work.exists():  # left by a task of the same id that was not cleaned up
            shutil.rmtree(work)
        work.mkdir(mode=0o711)
        made.append(work)
        (bundle.path / "work").symlink_to(work)
        (bundle.path / CONFIG_FILENAME).write_bytes(spec)
    except BaseException:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return bundle
