"""Unpack an image's layers into snapshots, from the client side (containerd's unpacker).

For each layer of the manifest chosen for the platform, in order::

    chain ID exists (committed)?  -> skip
    Prepare("extract-<unique> <chainID>", parent=<previous chain ID>)
    Diff.Apply(layer, mounts)     -> digest of the uncompressed tar
    digest != config diff_id?     -> Remove the key; FailedPrecondition
    Commit(name=<chainID>)        (labels: containerd.io/snapshot.ref=<chainID>)
    layer blob label containerd.io/uncompressed=<diff_id>

and finally the config blob gets ``containerd.io/gc.ref.snapshot.<snapshotter>=<top
chain ID>`` so the garbage collector keeps the snapshots while the image lives. All of it
runs under a lease (the caller's, or a temporary one), so a collection in between does
not take half an unpack.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pycontainerd.client.snapshots import mounts_to_proto
from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.images.platforms import Matcher

from pycontainerd._api.containerd.services.diff.v1 import (  # isort: skip
    diff_pb2,
    diff_pb2_grpc,
)
import contextlib

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
UNPACK_KEY_PREFIX = "extract"


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of each layer prefix (OCI image-spec config.md#layer-chainid)."""
    out: list[str] = []
    for diff_id in diff_ids:
        if out:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
        else:
            out.append(diff_id)
    return out


def unpack_key(chain_id: str) -> str:
    """containerd's extraction key format: ``extract-<unique> <chainID>``."""
    return f"{UNPACK_KEY_PREFIX}-{time.time_ns()}-{secrets.token_hex(4)} {chain_id}"


async def unpack_image(
    client: AsyncClient,
    image_name: str,
    target: Descriptor,
    *,
    snapshotter: str = "overlayfs",
    platform: Matcher | None = None,
) -> str:
    """Unpack the image's layers for ``platform`` into ``snapshotter``.

    Returns:
        The top layer's chain ID: the committed snapshot a container's rootfs grows from.
    Raises:
        NotFound: no manifest for the platform, or a blob is missing.
        InvalidArgument: layer and diff_id counts differ.
        FailedPrecondition: a layer's uncompressed digest is not its diff_id (the
            extraction snapshot is removed first).
    Cancellation removes the extraction snapshot in progress; committed layers stay.
    """
    async with client.lease():
        resolved = await client.images.manifest(target, platform)
        layers, diff_ids = resolved.layers, resolved.diff_ids
        if len(layers) != len(diff_ids):
            raise InvalidArgument(
                f"image {image_name}: {len(layers)} layers but {len(diff_ids)} diff_ids in config"
            )
        if not layers:
            raise InvalidArgument(f"image {image_name}: no layers to unpack")
        chain = chain_ids(diff_ids)
        for i, layer in enumerate(layers):
            await _unpack_layer(
                client, snapshotter, layer, diff_ids[i], chain[i], chain[i - 1] if i else ""
            )
        top = chain[-1]
        await client.content.update_labels(
            resolved.config_descriptor.digest, {LABEL_GC_REF_SNAPSHOT + snapshotter: top}
        )
        return top


async def _unpack_layer(
    client: AsyncClient,
    snapshotter: str,
    layer: Descriptor,
    diff_id: str,
    chain_id: str,
    parent: str,
) -> None:
    sn = client.snapshots(snapshotter)
    try:
        await sn.stat(chain_id)
        return  # already unpacked
    except NotFound:
        pass
    labels = {LABEL_SNAPSHOT_REF: chain_id}
    key = unpack_key(chain_id)
    mounts = await sn.prepare(key, parent, labels)
    try:
        stub = diff_pb2_grpc.DiffStub(client.channel)
        req = diff_pb2.ApplyRequest(diff=layer.to_proto(), mounts=mounts_to_proto(mounts))
        # Applying a large layer takes long; no per-call deadline.
        applied = (await client.call(stub.Apply, req, timeout=3600.0)).applied
        if applied.digest != diff_id:
            raise FailedPrecondition(
                f"wrong diff id calculated on extraction of layer {layer.digest}: "
                f"got {applied.digest}, config says {diff_id}"
            )
        await sn.commit(chain_id, key, labels)
    except AlreadyExists:
        # Another unpack committed the same chain ID meanwhile: that one stands.
        await sn.remove(key)
    except BaseException:
        with contextlib.suppress(NotFound):
            await sn.remove(key)
        raise
    await client.content.update_labels(layer.digest, {LABEL_UNCOMPRESSED: diff_id})
