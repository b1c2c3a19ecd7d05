"""Fetch blobs and manifests: streamed, verified on the fly, resumed with HTTP Range.

``fetch`` yields the blob's bytes from ``offset``. When the connection drops mid-body it
asks again with ``Range: bytes=<received>-`` and carries on. Started at 0, it hashes what
it yields and raises before the last chunk is handed on if the digest or size is wrong,
so a caller that commits only after the iterator ends never commits bad content.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx

from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, Unavailable
from pycontainerd.images import mediatypes as mt
from pycontainerd.remotes.hosts import CAP_PULL
from pycontainerd.remotes.resolver import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, RegistrySession

MANIFEST_TYPES = frozenset(
    {mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST}
)
# How many times a dropped body is resumed before giving up.
MAX_RESUMES = 5


def is_manifest(desc: Descriptor) -> bool:
    return desc.media_type in MANIFEST_TYPES


async def fetch(
    session: RegistrySession, desc: Descriptor, offset: int = 0
) -> AsyncIterator[bytes]:
    """The bytes of ``desc`` from ``offset``.

    Raises:
        FailedPrecondition: the content's digest or size differs from ``desc`` (only
            checked when starting at 0; the content store checks resumed ingests).
        InvalidArgument: a manifest or index over 4 MiB.
        NotFound: the registry does not have it.
        Unavailable: the connection kept dropping.
    """
    if is_manifest(desc) and desc.size > MAX_MANIFEST_SIZE:
        raise InvalidArgument(f"{desc.digest}: manifest is {desc.size} bytes, over the 4 MiB limit")
    algorithm, _, _ = desc.digest.partition(":")
    hasher = hashlib.new(algorithm) if offset == 0 else None
    suffix = f"{'manifests' if is_manifest(desc) else 'blobs'}/{desc.digest}"
    received = offset
    resumes = 0
    pending = b""  # held back so the last chunk is only yielded once verified
    while True:
        headers = {"Accept": MANIFEST_ACCEPT if is_manifest(desc) else "*/*"}
        if received:
            headers["Range"] = f"bytes={received}-"
        _, resp = await session.request(
            "GET", CAP_PULL, suffix, headers=headers, stream=True, ok=(200, 206)
        )
        try:
            # A 200 to a Range request ignored the range: skip what we already have.
            skip = received if received and resp.status_code == 200 else 0
            try:
                async for chunk in resp.aiter_raw():
                    if skip:
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                    received += len(chunk)
                    if received > desc.size:
                        raise FailedPrecondition(
                            f"{desc.digest}: registry sent more than {desc.size} bytes"
                        )
                    if hasher is not None:
                        hasher.update(chunk)
                    if pending:
                        yield pending
                    pending = chunk
            except (httpx.TransportError, OSError) as exc:
                resumes += 1
                if resumes > MAX_RESUMES:
                    raise Unavailable(f"{desc.digest}: connection dropped: {exc!r}") from None
                continue
        finally:
            await resp.aclose()
        if received < desc.size:
            # The body ended short without an error: resume like a drop.
            resumes += 1
            if resumes > MAX_RESUMES:
                raise Unavailable(f"{desc.digest}: got {received} of {desc.size} bytes")
            continue
        break
    if hasher is not None:
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != desc.digest:
            raise FailedPrecondition(
                f"digest mismatch: {desc.digest} from the registry has content {actual}"
            )
    if pending:
        yield pending


async def fetch_bytes(session: RegistrySession, desc: Descriptor) -> bytes:
    """The whole (small) blob, verified. Same errors as ``fetch``."""
    return b"".join([chunk async for chunk in fetch(session, desc)])
