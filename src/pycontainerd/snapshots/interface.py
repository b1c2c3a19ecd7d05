"""The snapshotter interface (containerd's snapshots.Snapshotter), as a Protocol.

Keys name active snapshots (``prepare``/``view``), names name committed ones
(``commit``); both share one key space per snapshotter. A snapshot's ``parent`` is
always a committed snapshot. Backends (overlayfs, native, btrfs, proxies) never see
namespaces: the metadata layer prefixes keys and keeps labels per namespace. Every
implementation passes ``snapshots.testsuite``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Kind(enum.IntEnum):
    """Same numbers as containerd's snapshots.Kind and the API's enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True, slots=True)
class Info:
    kind: Kind
    name: str
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0  # ns since the epoch
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    size: int = 0  # bytes used by this snapshot alone (not its parents)
    inodes: int = 0


@dataclass(frozen=True, slots=True)
class Mount:
    """What to mount: ``mount -t <type> <source> <target> -o <options>``."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


class Snapshotter(Protocol):
    async def stat(self, key: str) -> Info:
        """Raises NotFound."""
        ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Only labels change (``labels``/``labels.<k>`` paths; none means all labels).

        Raises:
            NotFound; InvalidArgument for another field path.
        """
        ...

    async def usage(self, key: str) -> Usage:
        """Raises NotFound."""
        ...

    async def mounts(self, key: str) -> list[Mount]:
        """Mounts of an active or view snapshot.

        Raises:
            NotFound; FailedPrecondition for a committed snapshot.
        """
        ...

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new writable snapshot on ``parent`` (committed), returning its mounts.

        Raises:
            AlreadyExists: the key is taken. NotFound: no such parent.
            InvalidArgument: the parent is not committed.
        """
        ...

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A read-only snapshot of ``parent``; same errors as ``prepare``."""
        ...

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed ``name`` (key is gone).

        Raises:
            NotFound: no such key. AlreadyExists: name taken.
            FailedPrecondition: ``key`` is not active (a view or committed).
        """
        ...

    async def remove(self, key: str) -> None:
        """Raises NotFound, or FailedPrecondition when it still has children."""
        ...

    def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every snapshot matching any filter (fields: kind, name, parent, labels.<k>)."""
        ...

    async def cleanup(self) -> None:
        """Remove directories no snapshot refers to (left by crashes or removals)."""
        ...

    async def aclose(self) -> None: ...
