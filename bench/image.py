"""A large, deterministic multi-layer image for the unpack benchmark.

About 1 GB uncompressed in 30,000 files over five gzip layers, written as an OCI image
layout tarball that ``ctr images import`` reads. Everything comes from one seeded
generator and fixed metadata (times, owners), so the same seed always gives the same
blobs. File contents mix incompressible bytes with word-like text, which gzips to
about a third of its size, near what real distribution layers do. Upper layers also
delete a few files of lower ones (whiteouts) and add symlinks and hardlinks.

The archive is cached under ``bench/cache/`` (not in git); it is rebuilt only when
missing or when the parameters in its name change.

Usage: python bench/image.py   # builds the cache if needed, prints its path
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from isal import isal_zlib

CACHE = Path(__file__).parent / "cache"
IMAGE_NAME = "docker.io/pycontainerd/bench-unpack:latest"
SEED = 20261128
FILES = 30_000
TOTAL_BYTES = 1_000_000_000
# Share of the bytes and files in each layer, bottom first.
LAYER_SHARES = (0.35, 0.25, 0.2, 0.13, 0.07)
MTIME = 1_700_000_000
_WORDS = (
    b"the of and to in is for on that with as by this from at are be or an it not "
    b"config value return error string int list dict path file data self none true "
    b"false import class def module package library version build test lib share usr"
).split()


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class _HashingGzipWriter(io.RawIOBase):
    """A sink that gzips what it is given and hashes both sides."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._gzip = isal_zlib.compressobj(3, isal_zlib.DEFLATED, 31)
        self.raw_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.raw_size = 0
        self.blob_size = 0

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes) -> None:
        self.blob_hash.update(data)
        self.blob_size += len(data)
        self._out.write(data)

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.raw_hash.update(data)
        self.raw_size += len(data)
        self._emit(self._gzip.compress(bytes(data)))
        return len(data)

    def finish(self) -> None:
        self._emit(self._gzip.flush())


def _text_block(rng: random.Random, size: int) -> bytes:
    words = [rng.choice(_WORDS) for _ in range(size // 5)]
    return b" ".join(words)[:size]


def _file_sizes(rng: random.Random, count: int, total: int) -> list[int]:
    # Mostly small files, a few large ones, scaled to the wanted total.
    raw = [rng.lognormvariate(8.5, 1.6) for _ in range(count)]
    scale = total / sum(raw)
    return [max(0, int(x * scale)) for x in raw]


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = MTIME
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.uname = ti.gname = ""
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


def _write_layer(
    index: int,
    rng: random.Random,
    text: bytes,
    files: int,
    size: int,
    lower_files: list[str],
    out: BinaryIO,
) -> tuple[Blob, str, list[str]]:
    """One gzip layer to ``out``: (blob, diff id, the regular files it added)."""
    sink = _HashingGzipWriter(out)
    added: list[str] = []
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        dirs_made: set[str] = set()
        for i, fsize in enumerate(_file_sizes(rng, files, size)):
            top = ("usr/lib", "usr/share", "opt/app", "var/lib")[i % 4]
            directory = f"{top}/pkg{index}-{i // 200:03d}/sub{(i // 20) % 10}"
            parts = directory.split("/")
            for depth in range(1, len(parts) + 1):
                sub = "/".join(parts[:depth])
                if sub not in dirs_made:
                    dirs_made.add(sub)
                    tf.addfile(_info(sub, tarfile.DIRTYPE))
            name = f"{directory}/file{i:05d}.dat"
            if i % 50 == 7 and added:
                tf.addfile(_info(name, tarfile.SYMTYPE, linkname=f"../sub0/{Path(added[-1]).name}"))
                continue
            if i % 97 == 11 and added:
                tf.addfile(_info(name, tarfile.LNKTYPE, linkname=added[-1]))
                continue
            random_part = fsize // 3
            offset = rng.randrange(0, len(text) - fsize) if fsize < len(text) else 0
            data = rng.randbytes(random_part) + text[offset : offset + fsize - random_part]
            tf.addfile(_info(name, size=len(data)), io.BytesIO(data))
            added.append(name)
        # Delete a few files of the layers below, as upgrades do.
        for victim in rng.sample(lower_files, min(len(lower_files), 20)):
            parent, base = victim.rsplit("/", 1)
            tf.addfile(_info(f"{parent}/.wh.{base}"))
    sink.finish()
    blob = Blob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "sha256:" + sink.blob_hash.hexdigest(),
        sink.blob_size,
    )
    return blob, "sha256:" + sink.raw_hash.hexdigest(), added


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    tf.addfile(_info(name, size=len(data)), io.BytesIO(data))


def build(path: Path, seed: int = SEED) -> None:
    """Write the image archive to ``path`` (via a temporary name)."""
    rng = random.Random(seed)
    text = _text_block(rng, 8 << 20)
    tmp = path.with_suffix(".partial")
    layer_dir = path.parent / "layers.partial"
    layer_dir.mkdir(parents=True, exist_ok=True)
    layers: list[tuple[Blob, str, Path]] = []
    all_files: list[str] = []
    for index, share in enumerate(LAYER_SHARES):
        layer_path = layer_dir / f"layer{index}.tar.gz"
        with layer_path.open("wb") as out:
            blob, diff_id, added = _write_layer(
                index,
                rng,
                text,
                int(FILES * share),
                int(TOTAL_BYTES * share),
                all_files,
                out,
            )
        all_files += added
        layers.append((blob, diff_id, layer_path))
        print(f"layer {index}: {blob.size / 1e6:.0f} MB gzip, {len(added)} files", flush=True)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]},
        },
        sort_keys=True,
    ).encode()
    config_blob = Blob(
        "application/vnd.oci.image.config.v1+json",
        "sha256:" + hashlib.sha256(config).hexdigest(),
        len(config),
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_blob.descriptor(),
            "layers": [blob.descriptor() for blob, _, _ in layers],
        },
        sort_keys=True,
    ).encode()
    manifest_blob = Blob(
        "application/vnd.oci.image.manifest.v1+json",
        "sha256:" + hashlib.sha256(manifest).hexdigest(),
        len(manifest),
    )
    index_json = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    **manifest_blob.descriptor(),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {"io.containerd.image.name": IMAGE_NAME},
                }
            ],
        },
        sort_keys=True,
    ).encode()
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tf, "index.json", index_json)
        _add_bytes(tf, f"blobs/sha256/{manifest_blob.digest[7:]}", manifest)
        _add_bytes(tf, f"blobs/sha256/{config_blob.digest[7:]}", config)
        for blob, _, layer_path in layers:
            ti = _info(f"blobs/sha256/{blob.digest[7:]}", size=blob.size)
            with layer_path.open("rb") as f:
                tf.addfile(ti, f)
            layer_path.unlink()
    layer_dir.rmdir()
    tmp.rename(path)


def cached_image(seed: int = SEED) -> Path:
    """The image archive for ``seed``, built on first use."""
    path = CACHE / f"unpack-{seed}-{FILES}-{TOTAL_BYTES}.tar"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        build(path, seed)
    return path


if __name__ == "__main__":
    print(cached_image())
