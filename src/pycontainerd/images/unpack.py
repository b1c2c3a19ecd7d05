"""Unpack an image's layers into snapshots, from the client side (containerd's unpacker).

For each layer of the manifest chosen for the platform, in order (``unpack_layer``)::

    chain ID exists (committed)?  -> skip
    (pull: wait until the layer's blob is committed to the content store)
    Prepare("extract-<unique> <chainID>", parent=<previous chain ID>)
    Diff.Apply(layer, mounts)     -> digest of the uncompressed tar
    digest != config diff_id?     -> Remove the key; FailedPrecondition
    Commit(name=<chainID>)        (labels: containerd.io/snapshot.ref=<chainID>)
    layer blob label containerd.io/uncompressed=<diff_id>

and finally the config blob gets ``containerd.io/gc.ref.snapshot.<snapshotter>=<top
chain ID>`` so the garbage collector keeps the snapshots while the image lives. All of it
runs under a lease (the caller's, or a temporary one), so a collection in between does
not take half an unpack.

``unpack_image`` runs the steps over blobs already in the content store (import,
``pyctr images unpack``); ``client.pull`` runs the same ``unpack_layer`` while later layers
are still downloading.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from pycontainerd.client.snapshots import mounts_to_proto
from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.images.platforms import Matcher

from pycontainerd._api.containerd.services.diff.v1 import (  # isort: skip
    diff_pb2,
    diff_pb2_grpc,
)

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


def layer_chain(
    image_name: str, layers: Sequence[Descriptor], diff_ids: Sequence[str]
) -> list[str]:
    """The chain IDs to unpack ``layers`` under, after checking they fit the config.

    Raises:
        InvalidArgument: no layers, or layer and diff_id counts differ.
    """
    if len(layers) != len(diff_ids):
        raise InvalidArgument(
            f"image {image_name}: {len(layers)} layers but {len(diff_ids)} diff_ids in config"
        )
    if not layers:
        raise InvalidArgument(f"image {image_name}: no layers to unpack")
    return chain_ids(diff_ids)


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
        chain = layer_chain(image_name, layers, diff_ids)
        for i, layer in enumerate(layers):
            await unpack_layer(
                client, snapshotter, layer, diff_ids[i], chain[i], chain[i - 1] if i else ""
            )
        top = chain[-1]
        await client.content.update_labels(
            resolved.config_descriptor.digest, {LABEL_GC_REF_SNAPSHOT + snapshotter: top}
        )
        return top


async def unpack_layer(
    client: AsyncClient,
    snapshotter: str,
    layer: Descriptor,
    diff_id: str,
    chain_id: str,
    parent: str,
    *,
    wait: Callable[[], Awaitable[object]] | None = None,
    made: list[str] | None = None,
) -> bool:
    """Apply ``layer`` on the committed snapshot ``parent`` and commit it as ``chain_id``.

    Nothing is done when ``chain_id`` is already committed. Otherwise ``wait`` (if
    given) is awaited before anything is made: a pull passes "this blob is committed to
    the content store", so a layer that is already unpacked never waits for its download.
    ``chain_id`` is appended to ``made`` (if given) just before the commit is asked for,
    since a commit cut short by cancellation may still have happened, and taken out
    again if another unpack turns out to have committed it first.

    Returns:
        True when this call committed ``chain_id``; False when it already existed, or
        another unpack committed it first (that one stands).
    Raises:
        FailedPrecondition: the layer's uncompressed digest is not ``diff_id``.
        NotFound: the blob or ``parent`` is missing.
        Whatever ``wait`` or the Diff service raises.
    On failure or cancellation the extraction snapshot is removed, so nothing half-made
    is left; the layer's content label is only set once the snapshot is committed.
    """
    sn = client.snapshots(snapshotter)
    try:
        await sn.stat(chain_id)
        return False  # already unpacked
    except NotFound:
        pass
    if wait is not None:
        await wait()
    labels = {LABEL_SNAPSHOT_REF: chain_id}
    key = unpack_key(chain_id)
    committed = True
    try:
        # Inside the try: a prepare cut short may still have made the key.
        mounts = await sn.prepare(key, parent, labels)
        stub = diff_pb2_grpc.DiffStub(client.channel)
        req = diff_pb2.ApplyRequest(diff=layer.to_proto(), mounts=mounts_to_proto(mounts))
        # Applying a large layer takes long; no per-call deadline.
        applied = (await client.call(stub.Apply, req, timeout=3600.0)).applied
        if applied.digest != diff_id:
            raise FailedPrecondition(
                f"wrong diff id calculated on extraction of layer {layer.digest}: "
                f"got {applied.digest}, config says {diff_id}"
            )
        if made is not None:
            made.append(chain_id)
        await sn.commit(chain_id, key, labels)
    except AlreadyExists:
        # Another unpack committed the same chain ID meanwhile: that one stands.
        committed = False
        if made is not None:
            made.remove(chain_id)
        await sn.remove(key)
    except BaseException:
        with contextlib.suppress(NotFound):
            await sn.remove(key)
        raise
    await client.content.update_labels(layer.digest, {LABEL_UNCOMPRESSED: diff_id})
    return committed
