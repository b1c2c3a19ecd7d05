"""Convert an image in the content store: uncompress layers, Docker media types to OCI.

This is containerd's ``images/converter`` (what ``ctr images convert`` runs), done over
the client's content and image APIs::

    index     drop entries whose platform is not wanted; convert the rest
    manifest  convert each layer, then the config; docker -> OCI ``mediaType``
    layer     gzip/zstd -> plain tar (``--uncompress``); media type renamed
    any desc  docker -> OCI media type (``--oci``); a Docker descriptor keeps no
              annotations (only OCI descriptors may carry them)

A blob that changes is written anew, with its old blob's labels, the
``containerd.io/gc.ref.content.*`` labels pointing at the new children, and no
``containerd.io/uncompressed`` label on an uncompressed layer. Manifests and indexes are
re-encoded the way Go's ``encoding/json`` writes the OCI structs (field order, compact,
HTML characters escaped, unknown fields dropped), so the digests are those ``ctr images
convert`` produces for the same input. Nothing that does not change is rewritten: an
image with nothing to convert keeps its target.

Uncompressing never changes a layer's diff ID, so the config is only renamed, never
rewritten (containerd rewrites ``rootfs.diff_ids`` only for converters that change the
tar stream, which this module does not have).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pycontainerd.client.types import Descriptor, Image
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound, NotImplemented_
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Platform, default_platform, normalize, platform_of

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

GC_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"

OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = OCI_LAYER_NONDIST + "+gzip"
OCI_LAYER_NONDIST_ZSTD = OCI_LAYER_NONDIST + "+zstd"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = DOCKER_LAYER_FOREIGN + ".gzip"

DOCKER_TO_OCI = {
    mt.DOCKER_MANIFEST_LIST: mt.OCI_INDEX,
    mt.DOCKER_MANIFEST: mt.OCI_MANIFEST,
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN_GZIP: OCI_LAYER_NONDIST_GZIP,
    mt.DOCKER_LAYER: mt.OCI_LAYER,
    DOCKER_LAYER_FOREIGN: OCI_LAYER_NONDIST,
    mt.DOCKER_CONFIG: mt.OCI_CONFIG,
}

UNCOMPRESSED_TYPE = {
    mt.DOCKER_LAYER_GZIP: mt.DOCKER_LAYER,
    DOCKER_LAYER_FOREIGN_GZIP: DOCKER_LAYER_FOREIGN,
    mt.OCI_LAYER_GZIP: mt.OCI_LAYER,
    mt.OCI_LAYER_ZSTD: mt.OCI_LAYER,
    OCI_LAYER_NONDIST_GZIP: OCI_LAYER_NONDIST,
    OCI_LAYER_NONDIST_ZSTD: OCI_LAYER_NONDIST,
}
UNCOMPRESSED_TYPES = frozenset(
    {mt.DOCKER_LAYER, DOCKER_LAYER_FOREIGN, mt.OCI_LAYER, OCI_LAYER_NONDIST}
)

_INDEX_TYPES = frozenset({mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST})
_MANIFEST_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
_CONFIG_TYPES = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})


def is_layer_type(media_type: str) -> bool:
    """containerd's ``images.IsLayerType``."""
    if media_type.startswith(
        ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
    ):
        return True
    return media_type in UNCOMPRESSED_TYPES


def is_docker_type(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


class PlatformFilter(Protocol):
    def match(self, p: Platform) -> bool: ...


@dataclass(frozen=True, slots=True)
class ExactPlatforms:
    """Matches exactly the given platforms, after normalisation (containerd's
    ``platforms.Ordered`` of ``NewMatcher``s, and ``DefaultStrict`` for the host)."""

    platforms: tuple[Platform, ...]

    def match(self, p: Platform) -> bool:
        key = _exact_key(p)
        return any(_exact_key(w) == key for w in self.platforms)


def _exact_key(p: Platform) -> tuple[str, str, str]:
    n = normalize(p)
    return n.os, n.architecture, n.variant


def host_strict() -> ExactPlatforms:
    """containerd 1.6's ``platforms.DefaultStrict()``: the host's os/arch only. 1.6 gives
    amd64 no variant (amd64 micro-architecture levels came later)."""
    host = default_platform()
    variant = "" if host.architecture == "amd64" else host.variant
    return ExactPlatforms((Platform(host.os, host.architecture, variant),))


# -- Go encoding/json of the OCI structs --------------------------------------------------


def _go_json(value: Any) -> bytes:
    """``json.Marshal``: compact, map keys sorted (the caller orders struct fields), and
    ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as Go does."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text.encode()


def _sorted_map(value: Any) -> dict[str, Any]:
    return {k: value[k] for k in sorted(value)} if isinstance(value, Mapping) else {}


def _go_platform(p: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"architecture": p.get("architecture", ""), "os": p.get("os", "")}
    for key in ("os.version", "os.features", "variant"):
        if p.get(key):
            out[key] = p[key]
    return out


def go_descriptor(d: Mapping[str, Any]) -> dict[str, Any]:
    """An OCI descriptor as Go's ``ocispec.Descriptor`` marshals it."""
    out: dict[str, Any] = {}
    if d.get("mediaType"):
        out["mediaType"] = d["mediaType"]
    out["digest"] = d.get("digest", "")
    out["size"] = d.get("size", 0)
    if d.get("urls"):
        out["urls"] = d["urls"]
    if d.get("annotations"):
        out["annotations"] = _sorted_map(d["annotations"])
    if d.get("data"):
        out["data"] = d["data"]
    if isinstance(d.get("platform"), Mapping):
        out["platform"] = _go_platform(d["platform"])
    if d.get("artifactType"):
        out["artifactType"] = d["artifactType"]
    return out


def _go_list(items: Any) -> list[dict[str, Any]] | None:
    # A nil slice marshals as null in Go: a manifest without layers says "layers":null.
    return [go_descriptor(i) for i in items] if items else None


def go_manifest(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"schemaVersion": m.get("schemaVersion", 0)}
    if m.get("mediaType"):
        out["mediaType"] = m["mediaType"]
    out["config"] = go_descriptor(m.get("config") or {})
    out["layers"] = _go_list(m.get("layers"))
    if isinstance(m.get("subject"), Mapping):
        out["subject"] = go_descriptor(m["subject"])
    if m.get("annotations"):
        out["annotations"] = _sorted_map(m["annotations"])
    return out


def go_index(i: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"schemaVersion": i.get("schemaVersion", 0)}
    if i.get("mediaType"):
        out["mediaType"] = i["mediaType"]
    out["manifests"] = _go_list(i.get("manifests"))
    if i.get("annotations"):
        out["annotations"] = _sorted_map(i["annotations"])
    return out


def _platform_of(d: Mapping[str, Any]) -> Platform | None:
    p = d.get("platform")
    return platform_of(p) if isinstance(p, Mapping) else None


def _clear_gc_labels(labels: dict[str, str], digest: str) -> None:
    for key in [k for k, v in labels.items() if v == digest and k.startswith(GC_REF_CONTENT)]:
        del labels[key]


# -- decompression --------------------------------------------------------------------


class _Decompressor:
    """Streaming gzip (every member, as Go's gzip reader) or zstd decompression."""

    def __init__(self, first: bytes) -> None:
        self._zstd: Any = None
        self._gz: Any = None
        if first[:2] == b"\x1f\x8b":
            self._gz = zlib.decompressobj(wbits=31)
        elif first[:4] == b"\x28\xb5\x2f\xfd":
            try:
                import zstandard
            except ImportError:
                raise NotImplemented_("zstd layers need the zstandard module") from None
            self._zstd = zstandard.ZstdDecompressor().decompressobj()
        else:
            raise InvalidArgument("layer is neither gzip nor zstd compressed")

    def feed(self, data: bytes) -> bytes:
        if self._zstd is not None:
            return self._zstd.decompress(data)  # type: ignore[no-any-return]
        out = []
        while data:
            out.append(self._gz.decompress(data))
            data = self._gz.unused_data
            if data:  # the next gzip member
                self._gz = zlib.decompressobj(wbits=31)
        return b"".join(out)

    def finish(self) -> None:
        if self._gz is not None and not self._gz.eof:
            raise InvalidArgument("compressed layer ends early")


# -- the converter --------------------------------------------------------------------

DescJSON = dict[str, Any]


class Converter:
    """One conversion: remembers converted digests, so a blob shared by several
    manifests is converted once."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        uncompress: bool = False,
        docker_to_oci: bool = False,
        platform: PlatformFilter | None = None,
    ) -> None:
        self.client = client
        self.uncompress = uncompress
        self.docker_to_oci = docker_to_oci
        self.platform = platform  # None: every platform
        self._done: dict[str, asyncio.Future[DescJSON | None]] = {}

    async def convert(self, desc: DescJSON) -> DescJSON | None:
        """The converted descriptor, or None when nothing about ``desc`` changes."""
        media_type = str(desc.get("mediaType", ""))
        new: DescJSON | None
        if is_layer_type(media_type):
            new = await self._once(desc, self._convert_layer)
        elif media_type in _MANIFEST_TYPES:
            new = await self._once(desc, self._convert_manifest)
        elif media_type in _INDEX_TYPES:
            new = await self._once(desc, self._convert_index)
        else:
            new = None  # configs: diff IDs never change here (see the module docstring)
        if is_docker_type(media_type):
            if self.docker_to_oci:
                new = dict(new or desc)
                new["mediaType"] = DOCKER_TO_OCI.get(new["mediaType"], new["mediaType"])
            elif (new if new is not None else desc).get("annotations"):
                new = dict(new or desc)
                new.pop("annotations", None)
        return new

    async def _once(self, desc: DescJSON, fn: Callable[[DescJSON], Any]) -> DescJSON | None:
        digest = str(desc["digest"])
        waiting = self._done.get(digest)
        if waiting is not None:
            found = await waiting
            return None if found is None else {**desc, **_content_fields(found)}
        future: asyncio.Future[DescJSON | None] = asyncio.get_running_loop().create_future()
        self._done[digest] = future
        try:
            result: DescJSON | None = await fn(desc)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: raised below
            raise
        future.set_result(result)
        return result

    async def _labels(self, digest: str) -> dict[str, str]:
        return dict((await self.client.content.info(digest)).labels)

    async def _read_json(self, desc: DescJSON) -> dict[str, Any]:
        data = await self.client.content.read_all(str(desc["digest"]))
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"{desc['digest']}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{desc['digest']}: not a JSON object")
        return doc

    async def _write_json(
        self, doc: dict[str, Any], old: DescJSON, labels: Mapping[str, str]
    ) -> DescJSON:
        data = _go_json(doc)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        await self.client.content.write_blob(
            f"converter-write-json-{digest}", data, size=len(data), expected=digest, labels=labels
        )
        return {**old, "digest": digest, "size": len(data)}

    async def _convert_manifest(self, desc: DescJSON) -> DescJSON | None:
        labels = await self._labels(str(desc["digest"]))
        manifest = go_manifest(await self._read_json(desc))
        modified = False
        if is_docker_type(manifest.get("mediaType", "")) and self.docker_to_oci:
            manifest["mediaType"] = DOCKER_TO_OCI.get(manifest["mediaType"], manifest["mediaType"])
            modified = True
        layers = manifest["layers"] or []
        for i, layer in enumerate(layers):
            new = await self.convert(layer)
            if new is not None:
                _clear_gc_labels(labels, layer["digest"])
                labels[f"{GC_REF_CONTENT}.l.{i}"] = new["digest"]
                layers[i] = go_descriptor(new)
                modified = True
        new_config = await self.convert(manifest["config"])
        if new_config is not None:
            _clear_gc_labels(labels, manifest["config"]["digest"])
            labels[f"{GC_REF_CONTENT}.config"] = new_config["digest"]
            manifest["config"] = go_descriptor(new_config)
            modified = True
        return await self._write_json(manifest, desc, labels) if modified else None

    async def _convert_index(self, desc: DescJSON) -> DescJSON | None:
        labels = await self._labels(str(desc["digest"]))
        index = go_index(await self._read_json(desc))
        modified = False
        if is_docker_type(index.get("mediaType", "")) and self.docker_to_oci:
            index["mediaType"] = DOCKER_TO_OCI.get(index["mediaType"], index["mediaType"])
            modified = True
        kept: list[dict[str, Any]] = []
        for i, entry in enumerate(index["manifests"] or []):
            p = _platform_of(entry)
            if p is not None and self.platform is not None and not self.platform.match(p):
                _clear_gc_labels(labels, entry["digest"])
                modified = True
                continue
            new = await self.convert(entry)
            if new is None:
                kept.append(entry)
                continue
            _clear_gc_labels(labels, entry["digest"])
            labels[f"{GC_REF_CONTENT}.m.{i}"] = new["digest"]
            kept.append(go_descriptor(new))
            modified = True
        if not modified:
            return None
        index["manifests"] = kept or None
        return await self._write_json(index, desc, labels)

    async def _convert_layer(self, desc: DescJSON) -> DescJSON | None:
        media_type = str(desc.get("mediaType", ""))
        if not self.uncompress or media_type in UNCOMPRESSED_TYPES:
            return None
        digest = str(desc["digest"])
        labels = await self._labels(digest)
        labels.pop(LABEL_UNCOMPRESSED, None)  # the blob is its own uncompressed form
        ref = f"convert-uncompress-from-{digest}"
        # Start over: a conversion interrupted earlier may have left this ingest behind.
        with contextlib.suppress(NotFound):
            await self.client.content.abort(ref)
        hasher = hashlib.sha256()
        size = 0
        async with self.client.content.writer(ref) as w:
            decomp: _Decompressor | None = None
            async for chunk in self.client.content.read(digest):
                if decomp is None:
                    decomp = _Decompressor(chunk)
                # Decompression is CPU work: keep it off the client's event loop.
                plain = await asyncio.to_thread(decomp.feed, chunk)
                if plain:
                    hasher.update(plain)
                    size += len(plain)
                    await w.write(plain)
            if decomp is None:
                raise InvalidArgument(f"layer {digest} is empty")
            decomp.finish()
            new_digest = "sha256:" + hasher.hexdigest()
            with contextlib.suppress(AlreadyExists):  # another conversion made it
                await w.commit(size, new_digest, labels)
        return {
            **desc,
            "digest": new_digest,
            "size": size,
            "mediaType": UNCOMPRESSED_TYPE.get(media_type, media_type),
        }


def _content_fields(d: DescJSON) -> DescJSON:
    # A blob converted for one parent, reused under another: the new content (digest,
    # size, media type) carries over, the parent's own annotations and platform stay.
    return {k: d[k] for k in ("digest", "size", "mediaType") if k in d}


async def convert_image(
    client: AsyncClient,
    src: str,
    dst: str,
    *,
    uncompress: bool = False,
    docker_to_oci: bool = False,
    platform: PlatformFilter | None = None,
) -> Image:
    """Convert image ``src`` into image ``dst`` (``ctr images convert``).

    Args:
        uncompress: rewrite gzip and zstd layers as plain tar.
        docker_to_oci: rename Docker media types to their OCI equivalents.
        platform: which index entries to keep; None keeps all, and then every one of
            them must have its content in the store.
    Returns:
        The ``dst`` image record. ``dst`` is replaced if it exists (updated when it is
        ``src`` itself); its labels are ``src``'s.
    Raises:
        NotFound: no image ``src``, or a blob it needs is missing.
        InvalidArgument: a manifest that is not JSON, a layer that is not what its
            media type says.
        NotImplemented_: a zstd layer without the zstandard module.
    New blobs are written under a lease: on failure or cancellation they are left for
    the garbage collector, and no image record is changed.
    """
    async with client.lease():
        image = await client.images.get(src)
        converter = Converter(
            client, uncompress=uncompress, docker_to_oci=docker_to_oci, platform=platform
        )
        new = await converter.convert(image.target.to_json())
        target = image.target if new is None else _descriptor(new)
        record = Image(name=dst, target=target, labels=image.labels)
        if dst != src:
            with contextlib.suppress(NotFound):
                await client.images.delete(dst)
            return await client.images.create(record)
        return await client.images.update(record)


def _descriptor(d: DescJSON) -> Descriptor:
    return Descriptor.from_json(d)


def platform_filter(platforms: Sequence[Platform], all_platforms: bool) -> PlatformFilter | None:
    """The ``ctr images convert`` choice: every platform, the given ones, or the host's."""
    if all_platforms:
        return None
    return ExactPlatforms(tuple(platforms)) if platforms else host_strict()
