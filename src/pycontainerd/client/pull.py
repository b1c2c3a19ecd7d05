"""``client.pull``: fetch an image from a registry into the daemon, unpacking as it goes.

Everything is written under one lease, so the garbage collector cannot take a half-pulled
image: manifests and indexes are fetched into memory (they are small and must be parsed),
their children handled first, then they are committed with containerd's
``containerd.io/gc.ref.content.*`` labels pointing at those children. Layers stream
straight into content-store ingests named ``layer-<digest>``, so an interrupted pull
resumes where it stopped; at most ``MAX_CONCURRENT_FETCHES`` blobs are fetched at once.

Unpacking runs beside the fetch, as containerd's unpacker does::

    fetch task:   handle(root) -> manifests parsed  -> blobs committed (in parallel)
                                      |                      |
                              parsed[digest]           committed[digest]   (futures)
                                      v                      v
    unpack task:  choose the manifest -> config -> layer 0 -> layer 1 -> ... (in order)

so layer N is applied while layers N+1.. are still downloading. The two run in one
task group: a failed fetch cancels the unpack and a failed unpack cancels the fetch.
The image record is written only when both succeeded; on failure the snapshots this
pull committed are removed and the lease is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycontainerd.client.content import WRITE_CHUNK, ContentWriter
from pycontainerd.client.images import sorted_by_preference
from pycontainerd.client.types import Descriptor, Image
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplemented_,
)
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Matcher, Platform, parse_platform, platform_of
from pycontainerd.images.unpack import LABEL_GC_REF_SNAPSHOT, layer_chain, unpack_layer
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
# Bytes per content Write message while a blob streams in (the writer's own chunk size).
WRITE_BATCH = WRITE_CHUNK
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


def _settle(future: asyncio.Future[Any], exc: BaseException | None = None) -> None:
    """Resolve ``future`` (with ``exc``, if given) unless it already is."""
    if future.done():
        return
    if exc is None:
        future.set_result(None)
        return
    future.set_exception(exc)
    future.exception()  # marked retrieved: whoever raised ``exc`` reports it


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
        self.started: set[str] = set()
        # Per digest, made on first use by whichever side asks first: set once the blob
        # (or manifest, with its children) is committed to the content store ...
        self.committed: dict[str, asyncio.Future[None]] = {}
        # ... and, for manifests and indexes, once fetched and checked (before children).
        self.parsed: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _committed(self, digest: str) -> asyncio.Future[None]:
        future = self.committed.get(digest)
        if future is None:
            future = self.committed[digest] = asyncio.get_running_loop().create_future()
        return future

    def _parsed(self, digest: str) -> asyncio.Future[dict[str, Any]]:
        future = self.parsed.get(digest)
        if future is None:
            future = self.parsed[digest] = asyncio.get_running_loop().create_future()
        return future

    async def wait_committed(self, digest: str) -> None:
        # Shielded: a waiter being cancelled must not cancel the future others share.
        await asyncio.shield(self._committed(digest))

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

    async def fetch_all(self, root: Descriptor) -> None:
        """Fetch ``root`` and everything it needs into the content store."""
        await self.handle(root)
        # Whatever the unpack still waits for was never part of this pull: fail it
        # rather than hang (a manifest the fetch filtered out, say).
        pending: list[tuple[str, asyncio.Future[Any]]] = [
            *self.committed.items(),
            *self.parsed.items(),
        ]
        for digest, future in pending:
            _settle(future, NotFound(f"{digest}: not fetched by this pull"))

    async def handle(self, desc: Descriptor, depth: int = 0) -> None:
        """Fetch ``desc`` and what it needs; a digest seen twice is handled once."""
        future = self._committed(desc.digest)
        if desc.digest in self.started:
            await asyncio.shield(future)
            return
        self.started.add(desc.digest)
        try:
            if desc.media_type in INDEX_TYPES or desc.media_type in MANIFEST_TYPES:
                await self.handle_manifest(desc, depth)
            elif desc.media_type == DOCKER_SCHEMA1:
                raise NotImplemented_("docker schema 1 manifests are not supported")
            else:
                await self.fetch_blob(desc, dict(self.source_label))
            _settle(future)
        except asyncio.CancelledError:
            future.cancel()
            if (parsed := self.parsed.get(desc.digest)) is not None:
                parsed.cancel()
            raise
        except BaseException as exc:
            _settle(future, exc)
            if (parsed := self.parsed.get(desc.digest)) is not None:
                _settle(parsed, exc)
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
            _check_index_children(children)
            for i, child in enumerate(children):
                labels[f"{GC_REF_CONTENT}.m.{i}"] = child.digest
        else:
            if not isinstance(doc.get("config"), dict):
                raise InvalidArgument(f"{desc.digest}: manifest has no config descriptor")
            config = Descriptor.from_json(doc["config"])
            layers = [Descriptor.from_json(layer) for layer in doc.get("layers") or []]
            children = [config, *layers]
            labels[f"{GC_REF_CONTENT}.config"] = config.digest
            for i, layer in enumerate(layers):
                labels[f"{GC_REF_CONTENT}.l.{i}"] = layer.digest
        parsed = self._parsed(desc.digest)
        if not parsed.done():
            parsed.set_result(doc)  # the unpack can choose its manifest while blobs download
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
                        await self._stream_to(w, desc)
                    await w.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                await self.client.content.update_labels(desc.digest, labels)
            except (FailedPrecondition, InvalidArgument):
                # Bad content: drop the ingest so nothing of it stays behind.
                with contextlib.suppress(NotFound):
                    await self.client.content.abort(ref)
                raise
        self.report(desc, "done", desc.size)

    async def _stream_to(self, w: ContentWriter, desc: Descriptor) -> None:
        """Write ``desc``'s bytes from ``w.offset`` in messages of about ``WRITE_BATCH``.

        The registry's body arrives in 64 KiB pieces; each Write message is a round trip
        to the daemon, so they are joined first (a 1 GB pull: 9.5 s -> 5.7 s to fetch,
        daemon CPU 4.2 s -> 1.7 s). Bytes buffered when the fetch fails are not written:
        the ingest's offset says where a later pull resumes.
        """
        pieces: list[bytes] = []
        buffered = 0
        async for chunk in fetch(self.session, desc, w.offset):
            pieces.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_BATCH:
                await w.write(b"".join(pieces))
                pieces.clear()
                buffered = 0
                self.report(desc, "downloading", w.offset)
        if pieces:
            await w.write(b"".join(pieces))
            self.report(desc, "downloading", w.offset)

    # -- unpacking, beside the fetch -------------------------------------------------------

    async def unpack(
        self,
        image_name: str,
        root: Descriptor,
        matcher: Matcher,
        snapshotter: str,
        created: list[str],
    ) -> str:
        """Unpack the manifest ``matcher`` picks from ``root``, each layer as soon as its
        blob is committed and its parent applied; chain IDs this call may have committed
        are appended to ``created`` (for the caller to remove on failure).

        Returns:
            The top layer's chain ID.
        """
        found = await self.choose_manifest(root, matcher, 0)
        if found is None:
            raise NotFound(f"manifest {root.digest}: no match for platform in manifest")
        _, manifest = found
        config_desc = Descriptor.from_json(manifest["config"])
        await self.wait_committed(config_desc.digest)
        config = await self.client.images.read_json(config_desc)
        layers = [Descriptor.from_json(layer) for layer in manifest.get("layers") or []]
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        chain = layer_chain(image_name, layers, diff_ids)
        for i, layer in enumerate(layers):
            await unpack_layer(
                self.client,
                snapshotter,
                layer,
                diff_ids[i],
                chain[i],
                chain[i - 1] if i else "",
                wait=functools.partial(self.wait_committed, layer.digest),
                made=created,
            )
        await self.client.content.update_labels(
            config_desc.digest, {LABEL_GC_REF_SNAPSHOT + snapshotter: chain[-1]}
        )
        return chain[-1]

    async def choose_manifest(
        self, desc: Descriptor, matcher: Matcher, depth: int
    ) -> tuple[Descriptor, dict[str, Any]] | None:
        """The manifest ``images.manifest`` would pick, from the documents as they are
        parsed (an index is committed only after all its blobs, too late to wait for)."""
        doc = await asyncio.shield(self._parsed(desc.digest))
        if desc.media_type in MANIFEST_TYPES:
            if desc.platform is None and depth == 0:
                # A lone manifest: its config says which platform it is for.
                config_desc = Descriptor.from_json(doc["config"])
                await self.wait_committed(config_desc.digest)
                config = await self.client.images.read_json(config_desc)
                if config.get("os") and not matcher.match(platform_of(config)):
                    return None
            return desc, doc
        entries = [Descriptor.from_json(m) for m in doc.get("manifests") or []]
        candidates = [e for e in entries if (p := _platform(e)) is None or matcher.match(p)]
        for entry in sorted_by_preference(candidates, matcher):
            found = await self.choose_manifest(entry, matcher, depth + 1)
            if found is not None:
                return found
        return None


def _check_index_children(children: Sequence[Descriptor]) -> None:
    """An index lists manifests and indexes; anything else is refused before it is
    fetched (it would otherwise be stored as an opaque blob and fail at unpack).

    The message is containerd's (``images.Manifest``): "unexpected media type".
    """
    for child in children:
        if child.media_type == DOCKER_SCHEMA1:
            raise NotImplemented_(f"{child.digest}: docker schema 1 manifests are not supported")
        if child.media_type not in INDEX_TYPES | MANIFEST_TYPES:
            raise NotFound(f"unexpected media type {child.media_type} for {child.digest}")


async def _remove_snapshots(
    client: AsyncClient, lease_id: str, snapshotter: str, names: list[str]
) -> None:
    """Remove snapshots a failed pull committed, children first.

    Only names the pull's lease holds are removed: a commit cut short by cancellation
    may not have happened, and the chain ID may then be another pull's. One that
    another unpack has built on meanwhile stays (GC decides later).
    """
    if not names:
        return
    kind = f"snapshots/{snapshotter}"
    held = {r.id for r in await client.leases.resources(lease_id) if r.type == kind}
    sn = client.snapshots(snapshotter)
    for name in reversed(names):
        if name in held:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await sn.remove(name)


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
    """Pull ``ref`` into the daemon's content store, unpack it, and record the image.

    With ``unpack``, each layer of the manifest for ``platform`` is applied as soon as
    its blob is committed and its parent layer applied, while later layers download.

    Returns:
        The image record (named by the normalised reference).
    Raises:
        InvalidArgument: a malformed reference, an oversized or malformed manifest, an
            index nested deeper than ``MAX_INDEX_DEPTH``.
        NotFound: the tag, digest, or a manifest for the platform does not exist; an
            index lists something that is neither a manifest nor an index ("unexpected
            media type", as containerd says; it is not fetched).
        NotImplemented_: a Docker schema 1 or unknown manifest media type.
        FailedPrecondition: content that does not match its digest (nothing of that
            blob is committed), a layer that does not unpack to its diff_id, or the
            registry refused the credentials.
        Unavailable: the registry kept failing after retries.
    On any failure no image record is written, the snapshots this pull committed are
    removed and the lease is deleted. Cancellation does the same and leaves resumable
    ingests; GC may drop blobs committed so far unless another pull finishes them.
    """
    parsed = parse_reference(ref)
    matcher = make_matcher(platform)
    async with (
        RegistrySession(
            parsed, hosts_dir=hosts_dir, plain_http=plain_http, credentials=credentials
        ) as session,
        client.lease() as lease,
    ):
        if progress is not None:
            progress(str(parsed), "resolving", 0, 0)
        root = await session.resolve()
        if root.media_type not in INDEX_TYPES | MANIFEST_TYPES:
            raise NotImplemented_(f"{parsed}: unknown manifest media type {root.media_type!r}")
        puller = _Puller(client, session, None if all_platforms else matcher, progress)
        created: list[str] = []
        jobs = [puller.fetch_all(root)]
        if unpack:
            jobs.append(_discard(puller.unpack(str(parsed), root, matcher, snapshotter, created)))
        try:
            await _all_or_first_error(jobs)
            # As containerd: the record is written once the content (and unpack) is whole.
            return await client.images.create_or_update(Image(name=str(parsed), target=root))
        except BaseException:
            await _remove_snapshots(client, lease.id, snapshotter, created)
            raise


async def _discard(coro: Coroutine[Any, Any, object]) -> None:
    await coro
