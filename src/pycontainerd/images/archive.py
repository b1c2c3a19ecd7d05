"""Import and export of image archives: OCI image layouts and docker-archives.

Formats (interoperable with ``ctr images import/export`` and ``docker save``)::

    OCI layout tar                      docker-archive (docker save)
    oci-layout   {"imageLayoutVersion"} manifest.json  [{"Config", "RepoTags", "Layers"}]
    index.json   the image index        <config>.json  the image config
    blobs/<alg>/<hex>                   <id>/layer.tar  (or blobs/sha256/<hex>)
    manifest.json (docker compat.)      repositories   (legacy, ignored on import)

The decisions (which format, which names, which manifest to build, which GC labels)
are pure functions over parsed JSON; the async driver only moves blobs between the tar
and the content store. As in containerd, an OCI ``oci-layout`` file makes the archive
OCI; otherwise ``manifest.json`` makes it a docker-archive.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pycontainerd import digests
from pycontainerd.client.types import Descriptor, DescriptorPlatform, Image
from pycontainerd.errdefs import InvalidArgument, NotFound
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Matcher, Platform

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

# JSON documents in an archive are small; containerd reads at most 20 MiB of one.
JSON_LIMIT = 20 << 20
READ_CHUNK = 1 << 20

LABEL_GC_CONFIG = "containerd.io/gc.ref.content.config"
LABEL_GC_MANIFEST = "containerd.io/gc.ref.content.m."
LABEL_GC_LAYER = "containerd.io/gc.ref.content.l."
LABEL_GC_OTHER = "containerd.io/gc.ref.content."

_LAYER_TYPES = frozenset(
    {
        mt.OCI_LAYER,
        mt.OCI_LAYER_GZIP,
        mt.OCI_LAYER_ZSTD,
        mt.DOCKER_LAYER,
        mt.DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
_MANIFEST_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
_INDEX_TYPES = frozenset({mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST})
_CONFIG_TYPES = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})


# -- pure decisions ----------------------------------------------------------------------


def child_gc_label(desc: Descriptor, index: int) -> str:
    """The label a parent blob carries to keep child ``desc`` (containerd ChildGCLabels)."""
    if desc.media_type in _CONFIG_TYPES:
        return LABEL_GC_CONFIG
    if desc.media_type in _MANIFEST_TYPES:
        return f"{LABEL_GC_MANIFEST}{index}"
    if desc.media_type in _LAYER_TYPES:
        return f"{LABEL_GC_LAYER}{index}"
    return f"{LABEL_GC_OTHER}{index}"


def children(doc: Mapping[str, Any]) -> list[Descriptor]:
    """The descriptors a manifest or index points at (config first, then layers)."""
    out: list[Descriptor] = []
    if isinstance(doc.get("config"), Mapping):
        out.append(Descriptor.from_json(doc["config"]))
    for key in ("layers", "manifests"):
        out.extend(Descriptor.from_json(d) for d in doc.get(key) or [])
    return out


def gc_labels(doc: Mapping[str, Any]) -> dict[str, str]:
    """Labels a manifest or index blob needs so GC keeps its children."""
    labels: dict[str, str] = {}
    layer_i = manifest_i = other_i = 0
    for child in children(doc):
        if child.media_type in _LAYER_TYPES:
            key, layer_i = child_gc_label(child, layer_i), layer_i + 1
        elif child.media_type in _MANIFEST_TYPES:
            key, manifest_i = child_gc_label(child, manifest_i), manifest_i + 1
        elif child.media_type in _CONFIG_TYPES:
            key = LABEL_GC_CONFIG
        else:
            key, other_i = child_gc_label(child, other_i), other_i + 1
        labels[key] = child.digest
    return labels


def layer_media_type(head: bytes, *, oci: bool = False) -> str:
    """The media type of a layer file from its first bytes (gzip, zstd or a plain tar)."""
    if head.startswith(b"\x1f\x8b"):
        return mt.OCI_LAYER_GZIP if oci else mt.DOCKER_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return mt.OCI_LAYER_ZSTD
    return mt.OCI_LAYER if oci else mt.DOCKER_LAYER


def normalize_reference(ref: str) -> str:
    """Docker's familiar names to full ones: ``busybox`` -> ``docker.io/library/busybox:latest``.

    Raises InvalidArgument for an empty or malformed reference.
    """
    if not ref or ref != ref.strip() or any(c.isupper() for c in ref.split("@")[0].split(":")[0]):
        raise InvalidArgument(f"invalid reference format: {ref!r}")
    first, slash, _rest = ref.partition("/")
    # Docker: the first component is a registry only when a path follows it and it
    # looks like a host (has a dot or a port, or is localhost).
    if not (slash and (first == "localhost" or "." in first or ":" in first)):
        ref = "docker.io/" + (ref if slash else "library/" + ref)
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        ref += ":latest"
    return ref


def oci_reference_name(name: str) -> str:
    """The ``org.opencontainers.image.ref.name`` of a full name: its tag (or digest)."""
    last = name.rsplit("/", 1)[-1]
    if "@" in last:
        return last.split("@", 1)[1]
    if ":" in last:
        return last.split(":", 1)[1]
    return name


def familiar_name(name: str) -> str:
    """``docker.io/library/busybox:latest`` -> ``busybox:latest`` (docker's RepoTags)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def image_name(annotations: Mapping[str, str], base_name: str) -> str:
    """The image name an index entry imports as ("" for none), as ctr's import names it.

    ``io.containerd.image.name`` wins; else the ref name, prefixed with ``base_name``
    unless it is already a full reference.
    """
    name = annotations.get(mt.ANNOTATION_IMAGE_NAME, "")
    if name:
        return name
    ref = annotations.get(mt.ANNOTATION_REF_NAME, "")
    if not ref:
        return ""
    if any(c in ref for c in "/:@"):
        return ref
    return f"{base_name}:{ref}"


@dataclass(frozen=True, slots=True)
class DockerManifestEntry:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def parse_docker_manifest(data: bytes) -> list[DockerManifestEntry]:
    """``manifest.json`` of a docker-archive. Raises InvalidArgument when malformed."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, list):
            raise TypeError("not a list")
        return [
            DockerManifestEntry(
                str(e["Config"]),
                tuple(str(t) for t in e.get("RepoTags") or ()),
                tuple(str(layer) for layer in e["Layers"]),
            )
            for e in doc
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"malformed docker manifest.json: {exc!r}") from None


def docker_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """A Docker schema 2 manifest for a docker-archive image."""
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def export_index(entries: Sequence[tuple[str, Descriptor]]) -> bytes:
    """index.json of an export: one entry per (name, target), annotated as ctr does."""
    manifests = []
    for name, target in entries:
        annotations = dict(target.annotations)
        annotations[mt.ANNOTATION_IMAGE_NAME] = name
        annotations[mt.ANNOTATION_REF_NAME] = oci_reference_name(name)
        d = Descriptor(target.media_type, target.digest, target.size, annotations, target.platform)
        manifests.append(d.to_json())
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
    return json.dumps(doc, separators=(",", ":")).encode()


def blob_path(digest: str) -> str:
    alg, hexpart = digests.parse(digest)
    return f"blobs/{alg}/{hexpart}"


# -- import ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Archive:
    """A seekable tar, its regular files by cleaned name (symlinks resolved)."""

    tar: tarfile.TarFile
    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)

    @classmethod
    def open(cls, fileobj: IO[bytes]) -> _Archive:
        # The archive owns the TarFile; the caller owns (and closes) ``fileobj``.
        tar = tarfile.open(fileobj=fileobj, mode="r:")  # noqa: SIM115
        arch = cls(tar)
        links: dict[str, str] = {}
        for m in tar.getmembers():
            name = _clean(m.name)
            if m.isreg():
                arch.members[name] = m
            elif m.issym():
                links[name] = _clean(posixpath.join(posixpath.dirname(name), m.linkname))
        for name, target in links.items():
            if target in arch.members:
                arch.members[name] = arch.members[target]
        return arch

    def read(self, name: str, limit: int = JSON_LIMIT) -> bytes:
        m = self.members.get(name)
        if m is None:
            raise NotFound(f"{name} not in archive")
        if m.size > limit:
            raise InvalidArgument(f"{name}: {m.size} bytes is over the {limit} byte limit")
        f = self.tar.extractfile(m)
        assert f is not None  # a regular member always has data
        return f.read()

    def head(self, name: str, n: int = 8) -> bytes:
        f = self.tar.extractfile(self.members[name])
        assert f is not None
        return f.read(n)


def _clean(name: str) -> str:
    """A member name without ``./``, ``..`` or leading slashes (as Go's path.Clean)."""
    return posixpath.normpath("/" + name).lstrip("/")


async def _chunks(arch: _Archive, name: str) -> AsyncIterator[bytes]:
    f = arch.tar.extractfile(arch.members[name])
    assert f is not None
    while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
        yield chunk


async def _ingest_member(
    client: AsyncClient,
    arch: _Archive,
    name: str,
    expected: str = "",
    labels: Mapping[str, str] | None = None,
) -> Descriptor:
    """Write one archive member as a blob; its digest is computed if not given."""
    member = arch.members.get(name)
    if member is None:
        raise NotFound(f"{name} not in archive")
    if not expected:
        expected = await asyncio.to_thread(_digest_member, arch, name)
    return await client.content.write_blob(
        f"import-{expected}",
        _chunks(arch, name),
        size=member.size,
        expected=expected,
        labels=labels,
    )


def _digest_member(arch: _Archive, name: str) -> str:
    h = digests.hasher()
    f = arch.tar.extractfile(arch.members[name])
    assert f is not None
    while chunk := f.read(READ_CHUNK):
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


@dataclass(frozen=True, slots=True)
class ImportedImage:
    image: Image
    unpacked_chain_id: str = ""


async def import_archive(
    client: AsyncClient,
    source: str | Path | IO[bytes],
    *,
    base_name: str = "",
    index_name: str = "",
    platform: Matcher | None = None,
    all_platforms: bool = False,
    unpack: bool = True,
    snapshotter: str = "overlayfs",
) -> list[ImportedImage]:
    """Import an OCI layout or docker-archive tar into the daemon's stores.

    Blobs the archive holds for the platform (or all platforms) are written to the
    content store with GC labels, images are created (or re-pointed) by name, and
    unpacked unless ``unpack`` is false. Runs under a lease, so an interrupted import
    leaves nothing that outlives it.

    Raises:
        InvalidArgument: an unrecognised or malformed archive, or a bad reference.
        NotFound: the archive names a blob it does not contain.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return await _import(
                client, f, base_name, index_name, platform, all_platforms, unpack, snapshotter
            )
    if source.seekable():
        return await _import(
            client, source, base_name, index_name, platform, all_platforms, unpack, snapshotter
        )
    with tempfile.TemporaryFile() as spool:
        await asyncio.to_thread(shutil.copyfileobj, source, spool)
        spool.seek(0)
        return await _import(
            client, spool, base_name, index_name, platform, all_platforms, unpack, snapshotter
        )


async def _import(
    client: AsyncClient,
    fileobj: IO[bytes],
    base_name: str,
    index_name: str,
    platform: Matcher | None,
    all_platforms: bool,
    unpack: bool,
    snapshotter: str,
) -> list[ImportedImage]:
    from pycontainerd.images.unpack import unpack_image

    try:
        arch = await asyncio.to_thread(_Archive.open, fileobj)
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from None
    matcher = None if all_platforms else (platform or Matcher())
    base = base_name or f"import-{datetime.date.today().isoformat()}"
    async with client.lease():
        if "oci-layout" in arch.members:
            layout = _json(arch, "oci-layout")
            if layout.get("imageLayoutVersion") != mt.OCI_LAYOUT_VERSION:
                raise InvalidArgument(
                    f"unsupported OCI version {layout.get('imageLayoutVersion')!r}"
                )
            index_bytes = arch.read("index.json")
            index = _loads("index.json", index_bytes)
            entries = [Descriptor.from_json(d) for d in index.get("manifests") or []]
            for entry in entries:
                await _import_tree(client, arch, entry, matcher, 0)
            index_desc = Descriptor(mt.OCI_INDEX, digests.of(index_bytes), len(index_bytes))
        elif "manifest.json" in arch.members:
            entries = await _import_docker(client, arch)
            index_bytes = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_INDEX,
                    "manifests": [e.to_json() for e in entries],
                },
                separators=(",", ":"),
            ).encode()
            index_desc = Descriptor(mt.OCI_INDEX, digests.of(index_bytes), len(index_bytes))
        else:
            raise InvalidArgument("unrecognized image format: no oci-layout or manifest.json")

        images: list[Image] = []
        for entry in entries:
            name = image_name(entry.annotations, base)
            if base_name and name and not _has_prefix(name, base_name):
                continue  # ctr: with --base-name, only images under it are imported
            if name:
                target = Descriptor(entry.media_type, entry.digest, entry.size)
                images.append(Image(name, target))
        if index_name:
            await client.content.write_blob(
                f"import-{index_desc.digest}",
                index_bytes,
                labels=gc_labels(json.loads(index_bytes)),
            )
            images.append(Image(index_name, index_desc))

        out: list[ImportedImage] = []
        for img in images:
            created = await client.images.create_or_update(img)
            chain = ""
            if unpack:
                chain = await unpack_image(
                    client, img.name, img.target, snapshotter=snapshotter, platform=platform
                )
            out.append(ImportedImage(created, chain))
        return out


def _has_prefix(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and (len(name) == len(prefix) or name[len(prefix)] in "/:@")


def _loads(name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{name}: not JSON: {exc}") from None


def _json(arch: _Archive, name: str) -> Any:
    return _loads(name, arch.read(name))


async def _import_tree(
    client: AsyncClient, arch: _Archive, desc: Descriptor, matcher: Matcher | None, depth: int
) -> None:
    """Write ``desc`` and (for an index or manifest) what it needs, children first."""
    if depth > 8:
        raise InvalidArgument(f"{desc.digest}: index nests too deep")
    path = blob_path(desc.digest)
    if desc.media_type in _INDEX_TYPES or desc.media_type in _MANIFEST_TYPES:
        doc = _loads(path, arch.read(path))
        wanted: list[Descriptor] = []
        for child in children(doc):
            if (
                matcher is not None
                and child.platform is not None
                and (child.media_type in _MANIFEST_TYPES or child.media_type in _INDEX_TYPES)
                and not matcher.match(
                    Platform(child.platform.os, child.platform.architecture, child.platform.variant)
                )
            ):
                continue
            wanted.append(child)
        for child in wanted:
            await _import_tree(client, arch, child, matcher, depth + 1)
        await _ingest_member(client, arch, path, desc.digest, gc_labels(doc))
    else:
        await _ingest_member(client, arch, path, desc.digest)


async def _import_docker(client: AsyncClient, arch: _Archive) -> list[Descriptor]:
    """Write a docker-archive's configs and layers and a schema 2 manifest per image.

    Returns the index entries: one per RepoTag (annotated with the full name), or one
    unnamed entry for an image without tags.
    """
    out: list[Descriptor] = []
    for entry in parse_docker_manifest(arch.read("manifest.json")):
        config_name = _clean(entry.config)
        config_bytes = arch.read(config_name)
        config = Descriptor(mt.DOCKER_CONFIG, digests.of(config_bytes), len(config_bytes))
        await client.content.write_blob(
            f"import-{config.digest}", config_bytes, expected=config.digest
        )
        layers: list[Descriptor] = []
        for layer_file in entry.layers:
            name = _clean(layer_file)
            if name not in arch.members:
                raise NotFound(f"layer {layer_file} not in archive")
            head = await asyncio.to_thread(arch.head, name)
            written = await _ingest_member(client, arch, name)
            layers.append(Descriptor(layer_media_type(head), written.digest, written.size))
        manifest_bytes = docker_manifest(config, layers)
        manifest_digest = digests.of(manifest_bytes)
        await client.content.write_blob(
            f"import-{manifest_digest}",
            manifest_bytes,
            labels=gc_labels(json.loads(manifest_bytes)),
        )
        cfg = _loads(config_name, config_bytes)
        plat = None
        if cfg.get("os"):
            plat = DescriptorPlatform(
                cfg["os"], cfg.get("architecture", ""), cfg.get("variant", "")
            )
        desc = Descriptor(mt.DOCKER_MANIFEST, manifest_digest, len(manifest_bytes), platform=plat)
        if not entry.repo_tags:
            out.append(desc)
        for tag in entry.repo_tags:
            full = normalize_reference(tag)
            out.append(
                Descriptor(
                    desc.media_type,
                    desc.digest,
                    desc.size,
                    {
                        mt.ANNOTATION_IMAGE_NAME: full,
                        mt.ANNOTATION_REF_NAME: oci_reference_name(full),
                    },
                    plat,
                )
            )
    return out


# -- export ------------------------------------------------------------------------------


async def _collect(
    client: AsyncClient,
    desc: Descriptor,
    matcher: Matcher | None,
    blobs: dict[str, Descriptor],
    docker_entries: list[tuple[Descriptor, Mapping[str, Any]]],
    depth: int,
) -> None:
    if depth > 8:
        raise InvalidArgument(f"{desc.digest}: index nests too deep")
    blobs.setdefault(desc.digest, desc)
    if desc.media_type not in _INDEX_TYPES and desc.media_type not in _MANIFEST_TYPES:
        return
    doc = await client.images.read_json(desc)
    if desc.media_type in _MANIFEST_TYPES:
        docker_entries.append((desc, doc))
    for child in children(doc):
        if (
            matcher is not None
            and child.platform is not None
            and (child.media_type in _MANIFEST_TYPES or child.media_type in _INDEX_TYPES)
            and not matcher.match(
                Platform(child.platform.os, child.platform.architecture, child.platform.variant)
            )
        ):
            continue
        await _collect(client, child, matcher, blobs, docker_entries, depth + 1)


async def export_archive(
    client: AsyncClient,
    dest: str | Path | IO[bytes],
    names: Iterable[str],
    *,
    platform: Matcher | None = None,
    all_platforms: bool = False,
    skip_manifest_json: bool = False,
) -> None:
    """Write the named images as an OCI layout tar (with docker's manifest.json too).

    Raises:
        NotFound: an image, or a blob it needs for the platform, is missing.
    """
    matcher = None if all_platforms else (platform or Matcher())
    entries: list[tuple[str, Descriptor]] = []
    blobs: dict[str, Descriptor] = {}
    docker: dict[str, tuple[Descriptor, Mapping[str, Any], list[str]]] = {}
    for name in names:
        img = await client.images.get(name)
        entries.append((name, img.target))
        found: list[tuple[Descriptor, Mapping[str, Any]]] = []
        await _collect(client, img.target, matcher, blobs, found, 0)
        for mdesc, mdoc in found:
            prev = docker.setdefault(mdesc.digest, (mdesc, mdoc, []))
            prev[2].append(name)
    manifest_json: list[dict[str, Any]] = []
    for _mdesc, mdoc, tags in docker.values():
        manifest_json.append(
            {
                "Config": blob_path(mdoc["config"]["digest"]),
                "RepoTags": [familiar_name(t) for t in tags],
                "Layers": [blob_path(layer["digest"]) for layer in mdoc.get("layers") or []],
            }
        )
    if isinstance(dest, (str, Path)):
        with open(dest, "wb") as f:
            await _write_export(client, f, entries, blobs, manifest_json, skip_manifest_json)
    else:
        await _write_export(client, dest, entries, blobs, manifest_json, skip_manifest_json)


async def _write_export(
    client: AsyncClient,
    out: IO[bytes],
    entries: list[tuple[str, Descriptor]],
    blobs: dict[str, Descriptor],
    manifest_json: list[dict[str, Any]],
    skip_manifest_json: bool,
) -> None:
    # Closed in a thread below: closing writes the end-of-archive blocks.
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    try:
        await asyncio.to_thread(
            _add,
            tar,
            "oci-layout",
            json.dumps({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION}).encode(),
        )
        dirs_done: set[str] = set()
        for digest in sorted(blobs):
            path = blob_path(digest)
            for d in ("blobs", path.rsplit("/", 1)[0]):
                if d not in dirs_done:
                    dirs_done.add(d)
                    await asyncio.to_thread(_add_dir, tar, d)
            reader = _BlobReader(client.content.read(digest), asyncio.get_running_loop())
            await asyncio.to_thread(_add_stream, tar, path, blobs[digest].size, reader)
        await asyncio.to_thread(_add, tar, "index.json", export_index(entries))
        if not skip_manifest_json and manifest_json:
            await asyncio.to_thread(
                _add,
                tar,
                "manifest.json",
                json.dumps(manifest_json, separators=(",", ":")).encode(),
            )
    finally:
        await asyncio.to_thread(tar.close)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


class _BlobReader:
    """A blocking ``read(n)`` over a blob's async chunks, for tarfile in a worker thread.

    Each read that needs more data waits for the next chunk on the event loop, so a
    blob is streamed into the archive, never held whole in memory.
    """

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._buffer = bytearray()
        self._eof = False

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buffer) < n):
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if chunk is None:
                self._eof = True
            else:
                self._buffer += chunk
        size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


def _add_stream(tar: tarfile.TarFile, name: str, size: int, reader: _BlobReader) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0
    tar.addfile(info, reader)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 0
    tar.addfile(info)
