"""The content store interface (containerd's content.Store), as Protocols.

Implementations: ``content.local`` (blobs on disk, no namespaces, no labels of its
own), ``metadata.content`` (wraps a backend store, adds namespaces, labels and the
sharing policy) and later proxies. Every implementation passes
``content.testsuite``.

Digests are strings ``<algorithm>:<hex>``; ``digests.parse`` validates them. Times
are nanoseconds since the epoch (UTC).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Info:
    digest: str
    size: int
    created_at: int = 0
    updated_at: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    ref: str
    offset: int
    total: int
    expected: str = ""
    started_at: int = 0
    updated_at: int = 0


class ReaderAt(Protocol):
    @property
    def size(self) -> int: ...

    async def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only at the end of the blob).

        Raises:
            InvalidArgument: negative offset or size, or offset past the end.
        """
        ...

    async def aclose(self) -> None: ...


class Writer(Protocol):
    """An open ingest. Only one writer may hold a ref at a time."""

    @property
    def ref(self) -> str: ...

    async def write(self, data: bytes) -> None:
        """Append at the current offset (the digest is computed as data arrives)."""
        ...

    async def status(self) -> Status: ...

    def digest(self) -> str:
        """Digest of everything written so far, in the writer's algorithm."""
        ...

    async def truncate(self, size: int) -> None:
        """Cut back to ``size`` bytes (0 restarts the ingest); re-hashes what remains.

        Raises:
            InvalidArgument: size negative or beyond the current offset.
        """
        ...

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Make the blob visible under its digest. ``size`` 0 and ``expected`` "" mean
        unknown. Always closes the writer.

        Raises:
            FailedPrecondition: size or digest mismatch (nothing is committed, the
                ingest is kept so the client can truncate and retry, as containerd).
            AlreadyExists: the blob already exists (the ingest is removed).
        """
        ...

    async def close(self) -> None:
        """Release the ref without committing; the ingest stays for a resume."""
        ...


class Store(Protocol):
    async def info(self, dgst: str) -> Info:
        """Raises NotFound."""
        ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Update labels (``labels`` or ``labels.<key>`` paths; none means all).

        Raises:
            NotFound; InvalidArgument for any other field path.
        """
        ...

    def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every blob matching any filter (fields: digest, size, labels.<key>)."""
        ...

    async def delete(self, dgst: str) -> None:
        """Raises NotFound."""
        ...

    async def reader_at(self, dgst: str) -> ReaderAt:
        """Raises NotFound."""
        ...

    async def read_blob(self, dgst: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a blob from ``offset`` (fewer only at its end), with no
        reader to open and close: the cheap path for the small reads clients make one
        request each.

        Raises:
            NotFound: no such blob.
            InvalidArgument: invalid digest, negative offset or size, or offset past the end.
        """
        ...

    async def status(self, ref: str) -> Status:
        """Raises NotFound when no ingest has that ref."""
        ...

    async def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """Active ingests matching any filter (field ``ref``)."""
        ...

    async def abort(self, ref: str) -> None:
        """Remove an ingest. Raises NotFound."""
        ...

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Open (or resume) the ingest ``ref``.

        Raises:
            InvalidArgument: empty ref.
            Unavailable: another writer holds the ref (``ref ... locked``).
            AlreadyExists: ``expected`` is already a committed blob (the caller need
                not send anything).
        """
        ...
