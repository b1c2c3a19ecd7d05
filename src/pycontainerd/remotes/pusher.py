"""Push blobs and manifests to a registry (OCI distribution spec, "Pushing").

Blobs: HEAD first (present: skipped); a cross-repository mount when the blob came from
another repository on the same registry; otherwise an upload session, finished with one
PUT for small blobs or PATCH chunks then PUT for large ones. Manifests: PUT by tag or
digest with their media type, after everything they point to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode, urljoin

from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import NotFound, Unavailable
from pycontainerd.remotes.hosts import CAP_PUSH, RegistryHost
from pycontainerd.remotes.resolver import RegistrySession

# Blobs up to this size go in one PUT; larger ones in PATCH chunks of CHUNK_SIZE.
MONOLITHIC_MAX = 8 << 20
CHUNK_SIZE = 8 << 20
DISTRIBUTION_SOURCE_PREFIX = "containerd.io/distribution.source."

BlobReader = Callable[[], AsyncIterator[bytes]]


async def blob_exists(session: RegistrySession, desc: Descriptor) -> bool:
    try:
        await session.request("HEAD", CAP_PUSH, f"blobs/{desc.digest}", push=True)
    except NotFound:
        return False
    return True


def mount_source(session: RegistrySession, labels: dict[str, str]) -> str | None:
    """The repository to mount from, if a source label names another repo on this host."""
    repo = labels.get(DISTRIBUTION_SOURCE_PREFIX + session.ref.domain)
    if not repo:
        return None
    # containerd joins several sources with ","; any one on this host will do.
    for candidate in repo.split(","):
        if candidate and candidate != session.ref.path:
            return candidate
    return None


def _location(host: RegistryHost, base: str, location: str) -> str:
    if not location:
        raise Unavailable("registry started an upload without a Location")
    return urljoin(base, location)


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


async def push_blob(
    session: RegistrySession,
    desc: Descriptor,
    read: BlobReader,
    labels: dict[str, str] | None = None,
) -> str:
    """Upload one blob. Returns ``"exists"``, ``"mounted"`` or ``"uploaded"``.

    Raises:
        Unavailable: the registry refused the upload.
        FailedPrecondition: unauthorized.
    """
    if await blob_exists(session, desc):
        return "exists"
    host = session.hosts_for(CAP_PUSH)[0]
    uploads = session.url(host, "blobs/uploads/")
    source = mount_source(session, labels or {})
    if source is not None:
        _, resp = await session.request(
            "POST",
            CAP_PUSH,
            "",
            url=_with_query(uploads, mount=desc.digest, **{"from": source}),
            push=True,
            ok=(201, 202),
        )
        if resp.status_code == 201:
            return "mounted"
    else:
        _, resp = await session.request("POST", CAP_PUSH, "", url=uploads, push=True, ok=(202,))
    location = _location(host, uploads, resp.headers.get("location", ""))
    if desc.size <= MONOLITHIC_MAX:
        data = b"".join([chunk async for chunk in read()])
        await session.request(
            "PUT",
            CAP_PUSH,
            "",
            url=_with_query(location, digest=desc.digest),
            headers={"Content-Type": "application/octet-stream"},
            content=data,
            push=True,
            ok=(201,),
        )
        return "uploaded"
    offset = 0
    buffer = bytearray()

    async def send(chunk: bytes) -> str:
        nonlocal offset
        _, r = await session.request(
            "PATCH",
            CAP_PUSH,
            "",
            url=location,
            content=chunk,
            push=True,
            ok=(202,),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        offset += len(chunk)
        return _location(host, location, r.headers.get("location", ""))

    async for chunk in read():
        buffer += chunk
        while len(buffer) >= CHUNK_SIZE:
            location = await send(bytes(buffer[:CHUNK_SIZE]))
            del buffer[:CHUNK_SIZE]
    if buffer:
        location = await send(bytes(buffer))
    await session.request(
        "PUT", CAP_PUSH, "", url=_with_query(location, digest=desc.digest), push=True, ok=(201,)
    )
    return "uploaded"


async def push_manifest(
    session: RegistrySession, desc: Descriptor, data: bytes, tag: str = ""
) -> None:
    """PUT a manifest or index under ``tag`` (or its digest). Raises Unavailable."""
    await session.request(
        "PUT",
        CAP_PUSH,
        f"manifests/{tag or desc.digest}",
        content=data,
        push=True,
        headers={"Content-Type": desc.media_type},
        ok=(201,),
    )
