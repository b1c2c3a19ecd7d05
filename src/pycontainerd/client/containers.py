"""Containers: metadata records of what to run (spec, runtime, rootfs snapshot, labels).

``client.containers`` is the Containers service; ``client.new_container(id, image, ...)``
is the convenience ``ctr run`` uses: it prepares the container's rootfs snapshot on top
of the image's unpacked layers (the committed snapshot named by the image's chain ID)
and builds the OCI spec from the image config.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, field_mask_pb2

from pycontainerd.client.aio import AsyncAPI, current_lease
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.oci import spec as oci

from pycontainerd._api.containerd.services.containers.v1 import (  # isort: skip
    containers_pb2 as cpb,
    containers_pb2_grpc as cgrpc,
)
from pycontainerd._api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from pycontainerd._api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from pycontainerd._api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from pycontainerd._api.containerd.types import mount_pb2

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"

_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


@dataclass(frozen=True, slots=True)
class Runtime:
    name: str = DEFAULT_RUNTIME
    options: any_pb2.Any | None = None


@dataclass(frozen=True, slots=True)
class Container:
    """A container record. ``spec`` is the OCI runtime spec (a dict) or None."""

    id: str
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    runtime: Runtime = field(default_factory=Runtime)
    spec: oci.Spec | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at_ns: int = 0
    updated_at_ns: int = 0
    extensions: Mapping[str, any_pb2.Any] = field(default_factory=dict)
    sandbox: str = ""


def container_to_proto(c: Container) -> cpb.Container:
    msg = cpb.Container(
        id=c.id,
        labels=dict(c.labels),
        image=c.image,
        runtime=cpb.Container.Runtime(name=c.runtime.name, options=c.runtime.options),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        sandbox=c.sandbox,
    )
    if c.spec is not None:
        msg.spec.CopyFrom(oci.spec_to_any(c.spec))
    for key, value in c.extensions.items():
        msg.extensions[key].CopyFrom(value)
    return msg


def container_from_proto(msg: cpb.Container) -> Container:
    spec = oci.spec_from_any(msg.spec) if msg.HasField("spec") and msg.spec.value else None
    options = msg.runtime.options if msg.runtime.HasField("options") else None
    return Container(
        id=msg.id,
        image=msg.image,
        labels=dict(msg.labels),
        runtime=Runtime(msg.runtime.name, options),
        spec=spec,
        snapshotter=msg.snapshotter,
        snapshot_key=msg.snapshot_key,
        created_at_ns=msg.created_at.ToNanoseconds(),
        updated_at_ns=msg.updated_at.ToNanoseconds(),
        extensions={k: v for k, v in msg.extensions.items()},
        sandbox=msg.sandbox,
    )


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of each layer prefix (OCI image-spec config.md#layer-chainid)."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What a container needs from an image: its config document and the chain ID of
    its top layer (the committed snapshot its rootfs grows from)."""

    name: str
    config: Mapping[str, Any]
    chain_id: str
    layers: tuple[tuple[str, str], ...] = ()  # (digest, media type), base first
    labels: Mapping[str, str] = field(default_factory=dict)  # the image record's


class ContainersAPI(AsyncAPI):
    """The Containers service, and new containers from images (``client.containers``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def _stub(self) -> cgrpc.ContainersAsyncStub:
        return cgrpc.ContainersStub(self._client.channel)

    async def create(
        self,
        id: str,
        *,
        image: str = "",
        spec: oci.Spec | None = None,
        snapshotter: str = "",
        snapshot_key: str = "",
        runtime: str = DEFAULT_RUNTIME,
        runtime_options: any_pb2.Any | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Container:
        """Create the record (no snapshot is made here; see ``new``).

        Raises:
            AlreadyExists: a container with this id exists in the namespace.
            InvalidArgument: a bad id, or no spec.
        """
        c = Container(
            id=id,
            image=image,
            labels=dict(labels or {}),
            runtime=Runtime(runtime, runtime_options),
            spec=spec,
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
        )
        req = cpb.CreateContainerRequest(container=container_to_proto(c))
        return container_from_proto((await self._client.call(self._stub.Create, req)).container)

    async def get(self, id: str) -> Container:
        """Raises NotFound."""
        req = cpb.GetContainerRequest(id=id)
        return container_from_proto((await self._client.call(self._stub.Get, req)).container)

    async def list(self, filters: Iterable[str] = ()) -> list[Container]:
        """Containers matching any filter (containerd's filter syntax). Raises
        InvalidArgument for a filter that does not parse."""
        req = cpb.ListContainersRequest(filters=list(filters))
        resp = await self._client.call(self._stub.List, req)
        return [container_from_proto(c) for c in resp.containers]

    async def update(self, container: Container, fields: Iterable[str] = ()) -> Container:
        """Write the given fields (``labels``, ``labels.<key>``, ``spec``, ``image``,
        ``snapshotkey``, ``extensions`` …; all updatable fields when empty).

        Raises:
            NotFound: no such container.
            InvalidArgument: a field that cannot change (runtime, snapshotter).
        """
        req = cpb.UpdateContainerRequest(container=container_to_proto(container))
        paths = list(fields)
        if paths:
            req.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        return container_from_proto((await self._client.call(self._stub.Update, req)).container)

    async def set_labels(self, id: str, labels: Mapping[str, str]) -> Mapping[str, str]:
        """Set labels (an empty value removes one); returns all labels after.

        Raises NotFound.
        """
        current = await self.get(id)
        merged = {k: v for k, v in {**current.labels, **labels}.items() if v}
        updated = Container(id=id, labels=merged)
        paths = [f"labels.{k}" for k in labels]
        result = await self.update(updated, paths)
        return result.labels

    async def delete(self, id: str, *, cleanup_snapshot: bool = True) -> None:
        """Delete the record, and its rootfs snapshot when ``cleanup_snapshot``.

        Raises:
            NotFound: no such container.
            FailedPrecondition: a task of this container still exists.
        """
        container = await self.get(id)
        await self._client.call(self._stub.Delete, cpb.DeleteContainerRequest(id=id))
        if cleanup_snapshot and container.snapshot_key and container.snapshotter:
            with contextlib.suppress(NotFound):  # already gone: nothing to clean up
                await self._snapshots_call(
                    "Remove",
                    snapshots_pb2.RemoveSnapshotRequest(
                        snapshotter=container.snapshotter, key=container.snapshot_key
                    ),
                )

    async def new(
        self,
        id: str,
        image: str,
        *opts: oci.SpecOpt,
        args: Sequence[str] = (),
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        snapshot_key: str | None = None,
        readonly_rootfs: bool = False,
        runtime: str = DEFAULT_RUNTIME,
        runtime_options: any_pb2.Any | None = None,
        labels: Mapping[str, str] | None = None,
        snapshot_labels: Mapping[str, str] | None = None,
    ) -> Container:
        """A container running ``image``: a new snapshot ``snapshot_key`` (default: the
        id) over the image's unpacked layers, and a spec from containerd's defaults, the
        image config (with ``args`` replacing its Cmd), then ``opts``.

        It all happens under a temporary lease, so a collection running meanwhile
        cannot take the snapshot before the container record holds it.

        Raises:
            NotFound: no such image, or a blob of it is missing.
            FailedPrecondition: the image is not unpacked for ``snapshotter``.
            AlreadyExists: the container or its snapshot exists.
        """
        key = snapshot_key or id
        lease_id = f"pycontainerd-new-{id}-{time.time_ns()}"
        lease_stub = leases_pb2_grpc.LeasesStub(self._client.channel)
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 24 * 3600))
        await self._client.call(
            lease_stub.Create,
            leases_pb2.CreateRequest(id=lease_id, labels={"containerd.io/gc.expire": expire}),
        )
        token = current_lease.set(lease_id)
        try:
            img = await self.image_config(image)
            try:
                await self._snapshots_call(
                    "Stat",
                    snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=img.chain_id),
                )
            except NotFound:
                raise FailedPrecondition(
                    f"image {image} is not unpacked for snapshotter {snapshotter}"
                    " (unpack it first, e.g. ctr images unpack)"
                ) from None
            method = "View" if readonly_rootfs else "Prepare"
            request_type = (
                snapshots_pb2.ViewSnapshotRequest
                if readonly_rootfs
                else snapshots_pb2.PrepareSnapshotRequest
            )
            await self._snapshots_call(
                method,
                request_type(
                    snapshotter=snapshotter,
                    key=key,
                    parent=img.chain_id,
                    labels=dict(snapshot_labels or {}),
                ),
            )
            # Only a configured user needs the image's user databases (its name, its
            # supplementary groups); reading them means reading the layers.
            users = await self.image_user_db(img) if _image_user(img.config) else None
            image_opt = oci.with_image_config(img.config, args, users)
            spec = oci.generate_spec(self._client.namespace, id, image_opt, *opts)
            try:
                return await self.create(
                    id,
                    image=img.name,
                    spec=spec,
                    snapshotter=snapshotter,
                    snapshot_key=key,
                    runtime=runtime,
                    runtime_options=runtime_options,
                    labels=labels,
                )
            except BaseException:
                await self._snapshots_call(
                    "Remove", snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
                )
                raise
        finally:
            current_lease.reset(token)
            await self._client.call(lease_stub.Delete, leases_pb2.DeleteRequest(id=lease_id))

    async def image_config(self, name: str, platform: str = "linux/amd64") -> ImageConfig:
        """The config and top chain ID of an image in the image store.

        Raises:
            NotFound: no such image, or a blob it names is missing.
            InvalidArgument: the image has no manifest for ``platform``.
        """
        images = images_pb2_grpc.ImagesStub(self._client.channel)
        img = (await self._client.call(images.Get, images_pb2.GetImageRequest(name=name))).image
        media_type, digest = img.target.media_type, img.target.digest
        manifest = json.loads(await self._read_blob(digest))
        if media_type in _INDEX_TYPES or "manifests" in manifest:
            wanted_os, _, wanted_arch = platform.partition("/")
            for entry in manifest.get("manifests", []):
                plat = entry.get("platform") or {}
                if (
                    plat.get("os", wanted_os) == wanted_os
                    and plat.get("architecture", wanted_arch) == wanted_arch.split("/")[0]
                ):
                    manifest = json.loads(await self._read_blob(entry["digest"]))
                    break
            else:
                raise InvalidArgument(f"image {name} has no manifest for {platform}")
        config = json.loads(await self._read_blob(manifest["config"]["digest"]))
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if not diff_ids:
            raise InvalidArgument(f"image {name} has no layers")
        layers = tuple((x["digest"], x.get("mediaType", "")) for x in manifest["layers"])
        return ImageConfig(img.name, config, chain_ids(diff_ids)[-1], layers, dict(img.labels))

    async def image_user_db(self, image: ImageConfig) -> oci.UserDB:
        """The image's ``/etc/passwd`` and ``/etc/group``, read from its layers (top
        first, minding whiteouts), so user names resolve without mounting anything.

        Raises NotFound when a layer blob is missing.
        """
        found: dict[str, str | None] = {}
        for digest, media_type in reversed(image.layers):
            blob = await self._read_blob(digest)
            layer_files = await asyncio.to_thread(_etc_files, blob, media_type)
            for name, text in layer_files.items():
                found.setdefault(name, text)
            if len(found) == len(_USER_FILES):
                break
        return oci.UserDB(found.get("etc/passwd") or "", found.get("etc/group") or "")

    async def _read_blob(self, digest: str) -> bytes:
        stub = content_pb2_grpc.ContentStub(self._client.channel)
        chunks = [
            resp.data
            async for resp in self._client.stream(
                stub.Read, content_pb2.ReadContentRequest(digest=digest)
            )
        ]
        return b"".join(chunks)

    async def _snapshots_call(self, method: str, request: Any) -> Any:
        stub = snapshots_pb2_grpc.SnapshotsStub(self._client.channel)
        return await self._client.call(getattr(stub, method), request)

    async def rootfs_mounts(self, container: Container) -> builtins.list[mount_pb2.Mount]:
        """The mounts of a container's rootfs snapshot (none without one).

        Raises NotFound when the snapshot is gone.
        """
        if not container.snapshot_key:
            return []
        resp = await self._snapshots_call(
            "Mounts",
            snapshots_pb2.MountsRequest(
                snapshotter=container.snapshotter, key=container.snapshot_key
            ),
        )
        return list(resp.mounts)


def _image_user(config: Mapping[str, Any]) -> str:
    user = (config.get("config") or {}).get("User") or ""
    return str(user)


_USER_FILES = ("etc/passwd", "etc/group")


def _etc_files(blob: bytes, media_type: str) -> dict[str, str | None]:
    """What one layer says about the user files: their text, or None where the layer
    deletes them (a whiteout, or an opaque ``etc``). Files it does not touch are absent."""
    if "zstd" in media_type:
        import zstandard

        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    out: dict[str, str | None] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        for member in tar:
            name = member.name.removeprefix("./").lstrip("/")
            if name in _USER_FILES and member.isfile():
                f = tar.extractfile(member)
                out[name] = f.read().decode(errors="replace") if f is not None else ""
            elif name in ("etc/.wh.passwd", "etc/.wh.group"):
                out.setdefault("etc/" + name.rsplit(".wh.", 1)[1], None)
            elif name == "etc/.wh..wh..opq":
                for user_file in _USER_FILES:
                    out.setdefault(user_file, None)
    return out
