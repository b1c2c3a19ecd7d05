"""Images over gRPC: ``client.images``, and reading an image's manifest and config.

An image is a name pointing at a root descriptor: an index (manifest list) or a
manifest. ``manifest(image, platform)`` walks an index down to the manifest for a
platform the way containerd's ``images.Manifest`` does: entries without a platform
match any, and the matcher's preferred platform wins.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import field_mask_pb2

from pycontainerd.client.aio import AsyncAPI
from pycontainerd.client.types import Descriptor, Image
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound, NotImplemented_
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Matcher, Platform, platform_of

from pycontainerd._api.containerd.services.images.v1 import (  # isort: skip
    images_pb2 as pb,
    images_pb2_grpc as pb_grpc,
)

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

INDEX_TYPES = frozenset({mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})
# An index may nest indexes; deeper than this is refused rather than followed.
MAX_INDEX_DEPTH = 8
# Manifests and configs are small; containerd refuses ones over 4 MiB.
MAX_MANIFEST_SIZE = 4 << 20


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """What an image needs for a platform and which of it the content store holds."""

    required: tuple[Descriptor, ...]
    present: tuple[Descriptor, ...]
    missing: tuple[Descriptor, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True, slots=True)
class ResolvedManifest:
    """The manifest an image resolves to for a platform, with its parsed config."""

    descriptor: Descriptor
    manifest: Mapping[str, Any]
    config_descriptor: Descriptor
    config: Mapping[str, Any]

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(layer) for layer in self.manifest.get("layers") or []]

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])


def _descriptor_platform(desc: Descriptor) -> Platform | None:
    if desc.platform is None:
        return None
    p = desc.platform
    return Platform(p.os, p.architecture, p.variant, p.os_version, p.os_features)


class ImagesAPI(AsyncAPI):
    """``client.images``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def _stub(self) -> pb_grpc.ImagesAsyncStub:
        return pb_grpc.ImagesStub(self._client.channel)

    async def get(self, name: str) -> Image:
        """Raises NotFound."""
        resp = await self._client.call(self._stub.Get, pb.GetImageRequest(name=name))
        return Image.from_proto(resp.image)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Image]:
        """Images matching any filter. Raises InvalidArgument for a bad filter."""
        resp = await self._client.call(self._stub.List, pb.ListImagesRequest(filters=list(filters)))
        return [Image.from_proto(i) for i in resp.images]

    async def create(self, image: Image) -> Image:
        """Raises AlreadyExists, or InvalidArgument for a bad name or target."""
        resp = await self._client.call(
            self._stub.Create, pb.CreateImageRequest(image=image.to_proto())
        )
        return Image.from_proto(resp.image)

    async def update(self, image: Image, fields: Sequence[str] = ()) -> Image:
        """Update ``fields`` (``labels``, ``labels.<k>``, ``target``; none: all).

        Raises NotFound.
        """
        req = pb.UpdateImageRequest(
            image=image.to_proto(),
            update_mask=field_mask_pb2.FieldMask(paths=list(fields)) if fields else None,
        )
        return Image.from_proto((await self._client.call(self._stub.Update, req)).image)

    async def create_or_update(self, image: Image) -> Image:
        """Create the image, or point an existing one at ``image``'s target and labels."""
        try:
            return await self.create(image)
        except AlreadyExists:
            pass
        return await self.update(image, ["target", "labels"] if image.labels else ["target"])

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> Image:
        """Set labels (an empty value removes one). Raises NotFound."""
        current = await self.get(name)
        image = Image(name, current.target, {k: v for k, v in labels.items() if v})
        return await self.update(image, [f"labels.{k}" for k in labels])

    async def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete the record; ``sync`` waits for the garbage collection. Raises NotFound."""
        await self._client.call(self._stub.Delete, pb.DeleteImageRequest(name=name, sync=sync))

    async def tag(self, source: str, target: str, *, force: bool = False) -> Image:
        """Name ``target`` for ``source``'s content; ``force`` replaces an existing one.

        Raises NotFound (no source) or AlreadyExists (target taken, without force).
        """
        src = await self.get(source)
        new = Image(target, src.target, dict(src.labels))
        if force:
            return await self.create_or_update(new)
        return await self.create(new)

    # -- reading content -------------------------------------------------------------

    async def read_json(self, desc: Descriptor) -> Any:
        """A manifest, index or config blob, parsed.

        Raises:
            NotFound: the blob is not in the content store.
            InvalidArgument: over 4 MiB or not JSON.
        """
        if desc.size > MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"{desc.digest}: {desc.size} bytes is over the 4 MiB limit")
        data = await self._client.content.read_all(desc.digest)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"{desc.digest}: not JSON: {exc}") from None

    async def manifest(
        self, target: Descriptor, platform: Matcher | None = None
    ) -> ResolvedManifest:
        """The manifest ``target`` resolves to for ``platform`` (default: this host).

        Raises:
            NotFound: no manifest for the platform, or a blob is missing.
            InvalidArgument: an index nests too deep, or a blob is malformed.
            NotImplemented_: a media type that is neither index nor manifest.
        """
        matcher = platform or Matcher()
        found = await self._find_manifest(target, matcher, 0)
        if found is None:
            raise NotFound(f"manifest {target.digest}: no match for platform in manifest")
        desc, manifest = found
        config_desc = Descriptor.from_json(manifest["config"])
        config = await self.read_json(config_desc)
        return ResolvedManifest(desc, manifest, config_desc, config)

    async def _find_manifest(
        self, desc: Descriptor, matcher: Matcher, depth: int
    ) -> tuple[Descriptor, Mapping[str, Any]] | None:
        if depth > MAX_INDEX_DEPTH:
            raise InvalidArgument(f"{desc.digest}: index nests deeper than {MAX_INDEX_DEPTH}")
        doc = await self.read_json(desc)
        media_type = desc.media_type or str(doc.get("mediaType", ""))
        if media_type in MANIFEST_TYPES or (not media_type and "config" in doc):
            if desc.platform is None and depth == 0:
                # A lone manifest: its config says which platform it is for.
                config = await self.read_json(Descriptor.from_json(doc["config"]))
                if config.get("os") and not matcher.match(platform_of(config)):
                    return None
            return desc, doc
        if media_type in INDEX_TYPES or (not media_type and "manifests" in doc):
            entries = [Descriptor.from_json(m) for m in doc.get("manifests") or []]
            candidates = [
                e for e in entries if (p := _descriptor_platform(e)) is None or matcher.match(p)
            ]
            candidates = sorted_by_preference(candidates, matcher)
            for entry in candidates:
                found = await self._find_manifest(entry, matcher, depth + 1)
                if found is not None:
                    return found
            return None
        if media_type == "application/vnd.docker.distribution.manifest.v1+prettyjws":
            raise NotImplemented_("docker schema 1 manifests are not supported")
        raise NotFound(f"unexpected media type {media_type} for {desc.digest}")

    async def platforms(self, target: Descriptor) -> builtins.list[Platform]:
        """Every platform an index lists (or the lone manifest's config platform)."""
        doc = await self.read_json(target)
        if "manifests" in doc:
            out: builtins.list[Platform] = []
            for m in doc["manifests"]:
                if m.get("platform"):
                    out.append(platform_of(m["platform"]))
            return out
        if "config" in doc:
            config = await self.read_json(Descriptor.from_json(doc["config"]))
            if config.get("os"):
                return [platform_of(config)]
        return []

    async def size(self, target: Descriptor, platform: Matcher | None = None) -> int:
        """Bytes of the image for ``platform``: its index, manifest, config and layers."""
        resolved = await self.manifest(target, platform)
        total = resolved.descriptor.size + resolved.config_descriptor.size
        total += sum(layer.size for layer in resolved.layers)
        if resolved.descriptor.digest != target.digest:
            total += target.size
        return total

    async def check(self, image: Image, platform: Matcher | None = None) -> ImageCheck:
        """Which blobs the image needs for ``platform`` and which are missing.

        An absent index or manifest makes everything below it missing too.
        """
        required: builtins.list[Descriptor] = [image.target]
        present: builtins.list[Descriptor] = []
        missing: builtins.list[Descriptor] = []
        try:
            resolved = await self.manifest(image.target, platform)
        except NotFound:
            missing.append(image.target)
            return ImageCheck(tuple(required), tuple(present), tuple(missing))
        if resolved.descriptor.digest != image.target.digest:
            required.append(resolved.descriptor)
        required.append(resolved.config_descriptor)
        required.extend(resolved.layers)
        for desc in required:
            try:
                await self._client.content.info(desc.digest)
                present.append(desc)
            except NotFound:
                missing.append(desc)
        return ImageCheck(tuple(required), tuple(present), tuple(missing))


def sorted_by_preference(
    entries: builtins.list[Descriptor], matcher: Matcher
) -> builtins.list[Descriptor]:
    """Stable sort: platforms the matcher prefers first, entries without one last."""

    def compare(a: Descriptor, b: Descriptor) -> int:
        pa, pb_ = _descriptor_platform(a), _descriptor_platform(b)
        if pa is None or pb_ is None:
            return (pa is None) - (pb_ is None)
        if matcher.less(pa, pb_):
            return -1
        if matcher.less(pb_, pa):
            return 1
        return 0

    return sorted(entries, key=functools.cmp_to_key(compare))
