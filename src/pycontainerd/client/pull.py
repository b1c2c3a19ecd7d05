"""``client.pull``: fetch an image from a registry into the daemon, then unpack it.

Everything is written under one lease, so the garbage collector cannot take a half-pulled
image: manifests and indexes are fetched into memory (they are small and must be parsed),
their children handled first, then they are committed with containerd's
``containerd.io/gc.ref.content.*`` labels pointing at those children. Layers stream
straight into content-store ingests named ``layer-<digest>``, so an interrupted pull
resumes where it stopped; at most ``MAX_CONCURRENT_FETCHES`` blobs are fetched at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycontainerd.client.types import Descriptor, Image
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplemented_,
)
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Matcher, Platform, parse_platform
from pycontainerd.remotes.auth import Credentials
from pycontainerd.remotes.fetcher import fetch, fetch_bytes
from pycontainerd.remotes.pusher import DISTRIBUTION_SOURCE_PREFIX
from pycontainerd.remotes.reference import parse_reference
from pycontainerd.remotes.resolver import DOCKER_SCHEMA1, RegistrySession

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

# progress(ref, status, offset, total); status: resolving, downloading, exists, done.
Progress = Callable[[str, str, int, int], None]
MAX_CONCURRENT_FETCHES = 3
MAX_INDEX_DEPTH = 8
GC_REF_CONTENT = "containerd.io/gc.ref.content"
INDEX_TYPES = frozenset({mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})


def ref_key(desc: Descriptor) -> str:
    """The ingest ref containerd uses for a descriptor (``remotes.MakeRefKey``)."""
    if desc.media_type in MANIFEST_TYPES:
        kind = "manifest"
    elif desc.media_type in INDEX_TYPES:
        kind = "index"
    elif desc.media_type in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        kind = "config"
    elif "layer" in desc.media_type or "rootfs" in desc.media_type:
        kind = "layer"
    else:
        kind = "unknown"
    return f"{kind}-{desc.digest}"


def make_matcher(platform: str | Platform | Matcher | None) -> Matcher:
    if platform is None:
        return Matcher()
    if isinstance(platform, Matcher):
        return platform
    if isinstance(platform, str):
        platform = parse_platform(platform)
    return Matcher([platform])


def _platform(desc: Descriptor) -> Platform | None:
    p = desc.platform
    if p is None:
        return None
    return Platform(p.os, p.architecture, p.variant, p.os_version, p.os_features)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc = group.exceptions[0]
    return _first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc


async def _all_or_first_error(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` together; on the first failure cancel the rest and raise it (not a
    group), so callers see errdefs kinds. Cancelled blob fetches leave resumable ingests."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as eg:
        raise _first_error(eg) from None


class _Puller:
    def __init__(
        self,
        client: AsyncClient,
        session: RegistrySession,
        matcher: Matcher | None,
        progress: Progress | None,
    ) -> None:
        self.client = client
        self.session = session
        self.matcher = matcher  # None: every platform
        self.progress = progress
        self.source_label = {DISTRIBUTION_SOURCE_PREFIX + session.ref.domain: session.ref.path}
        self.limit = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        self.done: dict[str, asyncio.Future[None]] = {}

    def report(self, desc: Descriptor, status: str, offset: int) -> None:
        if self.progress is not None:
            self.progress(ref_key(desc), status, offset, desc.size)

    async def present(self, desc: Descriptor, labels: dict[str, str]) -> bool:
        try:
            await self.client.content.info(desc.digest)
        except NotFound:
            return False
        await self.client.content.update_labels(desc.digest, labels)
        self.report(desc, "exists", desc.size)
        return True

    async def handle(self, desc: Descriptor, depth: int = 0) -> None:
        """Fetch ``desc`` and what it needs; a digest seen twice is handled once."""
        waiting = self.done.get(desc.digest)
        if waiting is not None:
            await waiting
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done[desc.digest] = future
        try:
            if desc.media_type in INDEX_TYPES or desc.media_type in MANIFEST_TYPES:
                await self.handle_manifest(desc, depth)
            elif desc.media_type == DOCKER_SCHEMA1:
                raise NotImplemented_("docker schema 1 manifests are not supported")
            else:
                await self.fetch_blob(desc, dict(self.source_label))
            future.set_result(None)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the raise below reports it
            raise

    async def handle_manifest(self, desc: Descriptor, depth: int) -> None:
        if depth > MAX_INDEX_DEPTH:
            raise InvalidArgument(f"{desc.digest}: index nests deeper than {MAX_INDEX_DEPTH}")
        self.report(desc, "downloading", 0)
        async with self.limit:
            data = await fetch_bytes(self.session, desc)
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"{desc.digest}: manifest is not JSON: {exc}") from None
        declared = doc.get("mediaType") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or (declared and declared != desc.media_type):
            raise InvalidArgument(
                f"{desc.digest}: media type {declared!r} does not match {desc.media_type!r}"
            )
        labels = dict(self.source_label)
        children: list[Descriptor] = []
        if desc.media_type in INDEX_TYPES:
            for entry in doc.get("manifests") or []:
                child = Descriptor.from_json(entry)
                p = _platform(child)
                if self.matcher is None or p is None or self.matcher.match(p):
                    children.append(child)
            if not children:
                raise NotFound(f"{desc.digest}: no manifest for the requested platform")
            for i, child in enumerate(children):
                labels[f"{GC_REF_CONTENT}.m.{i}"] = child.digest
        else:
            config = Descriptor.from_json(doc["config"])
            layers = [Descriptor.from_json(layer) for layer in doc.get("layers") or []]
            children = [config, *layers]
            labels[f"{GC_REF_CONTENT}.config"] = config.digest
            for i, layer in enumerate(layers):
                labels[f"{GC_REF_CONTENT}.l.{i}"] = layer.digest
        await _all_or_first_error([self.handle(child, depth + 1) for child in children])
        if not await self.present(desc, labels):
            await self.client.content.write_blob(
                ref_key(desc), data, size=desc.size, expected=desc.digest, labels=labels
            )
        self.report(desc, "done", desc.size)

    async def fetch_blob(self, desc: Descriptor, labels: dict[str, str]) -> None:
        if await self.present(desc, labels):
            return
        ref = ref_key(desc)
        async with self.limit:
            try:
                async with self.client.content.writer(ref, desc.size, desc.digest) as w:
                    self.report(desc, "downloading", w.offset)
                    # An ingest left complete by an interrupted pull needs only its commit
                    # (which checks the digest): a Range past the end would be refused.
                    if w.offset < desc.size:
                        async for chunk in fetch(self.session, desc, w.offset):
                            await w.write(chunk)
                            self.report(desc, "downloading", w.offset)
                    await w.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                await self.client.content.update_labels(desc.digest, labels)
            except (FailedPrecondition, InvalidArgument):
                # Bad content: drop the ingest so nothing of it stays behind.
                with contextlib.suppress(NotFound):
                    await self.client.content.abort(ref)
                raise
        self.report(desc, "done", desc.size)


async def pull(
    client: AsyncClient,
    ref: str,
    *,
    unpack: bool = True,
    platform: str | Platform | Matcher | None = None,
    all_platforms: bool = False,
    snapshotter: str = "overlayfs",
    progress: Progress | None = None,
    hosts_dir: str | Path | None = None,
    plain_http: bool = False,
    credentials: Credentials | str | None = None,
) -> Image:
    """Pull ``ref`` into the daemon's content store, record the image, and unpack it.

    Returns:
        The image record (named by the normalised reference).
    Raises:
        InvalidArgument: a malformed reference, an oversized or malformed manifest.
        NotFound: the tag, digest, or a manifest for the platform does not exist.
        NotImplemented_: a Docker schema 1 or unknown manifest media type.
        FailedPrecondition: content that does not match its digest (nothing of that
            blob is committed), or the registry refused the credentials.
        Unavailable: the registry kept failing after retries.
    Cancellation leaves resumable ingests; the lease is deleted, so GC may drop blobs
    committed so far unless another pull finishes them.
    """
    parsed = parse_reference(ref)
    matcher = make_matcher(platform)
    async with (
        RegistrySession(
            parsed, hosts_dir=hosts_dir, plain_http=plain_http, credentials=credentials
        ) as session,
        client.lease(),
    ):
        if progress is not None:
            progress(str(parsed), "resolving", 0, 0)
        root = await session.resolve()
        if root.media_type not in INDEX_TYPES | MANIFEST_TYPES:
            raise NotImplemented_(f"{parsed}: unknown manifest media type {root.media_type!r}")
        puller = _Puller(client, session, None if all_platforms else matcher, progress)
        await puller.handle(root)
        image = await client.images.create_or_update(Image(name=str(parsed), target=root))
        if unpack:
            from pycontainerd.images.unpack import unpack_image

            await unpack_image(client, image.name, root, snapshotter=snapshotter, platform=matcher)
        return image
