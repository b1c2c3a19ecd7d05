"""The walking differ: layers applied to snapshot mounts, mounts compared into layers.

Apply reads the layer from the (namespaced) content store and extracts it with
``archive.apply_layer``. When the target is a single overlay mount the layer goes
straight into its upper directory with overlay whiteouts (no mount needed, as
containerd does on Linux); a single bind mount is its source directory; anything
else is mounted on a temporary directory and whiteouts become deletions.

Compare writes an OCI layer of the changes from ``lower`` to ``upper``: from an
overlay upper directory when it can, else by walking both trees. The layer goes into
the content store with its uncompressed digest in ``containerd.io/uncompressed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycontainerd import archive
from pycontainerd.content.interface import ReaderAt
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotImplemented_
from pycontainerd.images import mediatypes as mt
from pycontainerd.metadata.content import ContentStore
from pycontainerd.snapshots import mount as mountlib
from pycontainerd.snapshots.interface import Mount

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
APPLY_MEDIA_TYPES = frozenset(
    {
        mt.OCI_LAYER,
        mt.OCI_LAYER_GZIP,
        mt.OCI_LAYER_ZSTD,
        mt.DOCKER_LAYER,
        mt.DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
COMPARE_MEDIA_TYPES: dict[str, archive.DiffCompression] = {
    mt.OCI_LAYER_GZIP: "gzip",
    mt.OCI_LAYER: "none",
    mt.DOCKER_LAYER_GZIP: "gzip",
    mt.DOCKER_LAYER: "none",
}


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None


class _ThreadReader(io.RawIOBase):
    """A blocking file over an async ReaderAt, for the extraction thread: each read
    hops back onto the event loop."""

    def __init__(self, reader: ReaderAt, loop: asyncio.AbstractEventLoop) -> None:
        self._reader = reader
        self._loop = loop
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        want = min(len(buf), 1 << 20)
        fut = asyncio.run_coroutine_threadsafe(self._reader.read_at(self._offset, want), self._loop)
        data = fut.result()
        buf[: len(data)] = data
        self._offset += len(data)
        return len(data)


def _overlay_dirs(m: Mount) -> dict[str, str]:
    out = {}
    for opt in m.options:
        key, sep, value = opt.partition("=")
        if sep and key in ("upperdir", "lowerdir", "workdir"):
            out[key] = value
    return out


@contextlib.contextmanager
def _target(
    mounts: Sequence[Mount], work: Path
) -> Iterator[tuple[Path, archive.WhiteoutMode, list[Path]]]:
    """A directory showing ``mounts``, the whiteout mode to apply with, and (for an
    overlay upper directory) the lower directories under it, nearest first."""
    if len(mounts) == 1 and mounts[0].type == "overlay":
        dirs = _overlay_dirs(mounts[0])
        if "upperdir" in dirs:
            lowers = [Path(p) for p in dirs.get("lowerdir", "").split(":") if p]
            yield Path(dirs["upperdir"]), "overlay", lowers
            return
    if len(mounts) == 1 and mounts[0].type == "bind":
        yield Path(mounts[0].source), "delete", []
        return
    if not mounts:
        raise InvalidArgument("no mounts to apply to")
    target = Path(tempfile.mkdtemp(prefix="diff-", dir=work))
    try:
        with mountlib.mounted(mounts, target):
            yield target, "delete", []
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()


class WalkingDiffer:
    def __init__(self, content: ContentStore, work: Path) -> None:
        self._content = content
        self._work = work

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Extract the layer ``desc`` onto ``mounts``; returns the uncompressed layer's
        descriptor (its digest is the diffID the client checks).

        Raises:
            NotImplemented_: a media type that is not a layer we can apply.
            NotFound: the layer is not in this namespace's content store.
            InvalidArgument / FailedPrecondition: a malformed or malicious layer (the
            caller discards the snapshot it applied into).
        """
        if desc.media_type not in APPLY_MEDIA_TYPES:
            raise NotImplemented_(f"unsupported diff media type: {desc.media_type}")
        reader = await self._content.reader_at(desc.digest)
        loop = asyncio.get_running_loop()
        self._work.mkdir(parents=True, exist_ok=True, mode=0o700)

        def run() -> archive.ApplyResult:
            stream = io.BufferedReader(_ThreadReader(reader, loop), 1 << 20)
            with _target(mounts, self._work) as (root, mode, parents):
                return archive.apply_layer(
                    root, stream, whiteout_mode=mode, media_type=desc.media_type, parents=parents
                )

        try:
            result = await asyncio.to_thread(run)
        finally:
            await reader.aclose()
        return Descriptor(mt.OCI_LAYER, result.diff_id, result.size)

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """Write the changes from ``lower`` to ``upper`` as a layer in the content store.

        Raises:
            NotImplemented_: an output media type we cannot write.
        """
        media_type = media_type or mt.OCI_LAYER_GZIP
        compression = COMPARE_MEDIA_TYPES.get(media_type)
        if compression is None:
            raise NotImplemented_(f"unsupported diff media type: {media_type}")
        self._work.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp_name = tempfile.mkstemp(prefix="layer-", dir=self._work)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            digest, diff_id, size = await asyncio.to_thread(
                self._write_changes, lower, upper, tmp, compression
            )
            all_labels = dict(labels or {})
            all_labels[LABEL_UNCOMPRESSED] = diff_id
            try:
                writer = await self._content.writer(
                    ref or f"diff-{secrets.token_hex(8)}", size, digest
                )
            except AlreadyExists:
                # The same diff made before: it is the answer, as in containerd.
                await self._label_uncompressed(digest, diff_id)
                return Descriptor(media_type, digest, size)
            try:
                # A blob the store already holds (another namespace) needs no bytes.
                if (await writer.status()).offset != size:
                    await writer.truncate(0)
                    with tmp.open("rb") as f:
                        while chunk := await asyncio.to_thread(f.read, 1 << 20):
                            await writer.write(chunk)
                await writer.commit(size, digest, all_labels)
            except AlreadyExists:
                await writer.close()
                await self._label_uncompressed(digest, diff_id)
            except BaseException:
                await writer.close()
                raise
        finally:
            tmp.unlink(missing_ok=True)
        return Descriptor(media_type, digest, size)

    async def _label_uncompressed(self, digest: str, diff_id: str) -> None:
        info = await self._content.info(digest)
        if not info.labels.get(LABEL_UNCOMPRESSED):
            labels = {**info.labels, LABEL_UNCOMPRESSED: diff_id}
            await self._content.update(
                dataclasses.replace(info, labels=labels), [f"labels.{LABEL_UNCOMPRESSED}"]
            )

    def _write_changes(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        out: Path,
        compression: archive.DiffCompression,
    ) -> archive.DiffResult:
        with out.open("wb") as f, contextlib.ExitStack() as stack:
            upper_dirs = _overlay_dirs(upper[0]) if len(upper) == 1 else {}
            if upper and upper[0].type == "overlay" and "upperdir" in upper_dirs:
                lower_root = self._view(lower, stack)
                return archive.write_diff(
                    lower_root,
                    Path(upper_dirs["upperdir"]),
                    f,
                    mode="overlay",
                    compression=compression,
                )
            lower_root = self._view(lower, stack)
            upper_root = self._view(upper, stack)
            return archive.write_diff(
                lower_root, upper_root, f, mode="double-walk", compression=compression
            )

    def _view(self, mounts: Sequence[Mount], stack: contextlib.ExitStack) -> Path:
        target = Path(tempfile.mkdtemp(prefix="view-", dir=self._work))
        stack.callback(lambda: target.rmdir())
        if mounts:
            ro = [Mount(m.type, m.source, (*m.options, "ro"), m.target) for m in mounts]
            stack.enter_context(mountlib.mounted(ro, target))
        return target
