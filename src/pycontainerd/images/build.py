"""Build small single-layer images from files, as OCI archives or docker-archives.

The demo and the tests make their images this way from Debian's busybox-static, so
nothing is pulled from the network. Output is deterministic: fixed times, sorted
entries, gzip without a name or time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycontainerd.images import mediatypes as mt

EPOCH = 0


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None  # a symlink target; data is ignored
    directory: bool = False


@dataclass
class Layer:
    tar: bytes
    gz: bytes

    @property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.gz).hexdigest()


def make_layer(files: Mapping[str, File]) -> Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            f = files[name]
            info = tarfile.TarInfo(name.lstrip("/"))
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.mode = f.mode
            if f.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif f.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = f.link
                tar.addfile(info)
            else:
                info.size = len(f.data)
                tar.addfile(info, io.BytesIO(f.data))
    raw = buf.getvalue()
    return Layer(raw, gzip.compress(raw, mtime=0))


def busybox_files(
    busybox: Path = Path("/bin/busybox"),
    applets: tuple[str, ...] = (
        "sh",
        "echo",
        "true",
        "false",
        "cat",
        "ls",
        "sleep",
        "env",
        "id",
        "ps",
        "hostname",
    ),
) -> dict[str, File]:
    """A root filesystem with busybox-static and a few applet links."""
    files: dict[str, File] = {
        "bin": File(mode=0o755, directory=True),
        "bin/busybox": File(busybox.read_bytes(), mode=0o755),
        "etc": File(mode=0o755, directory=True),
        "tmp": File(mode=0o1777, directory=True),
    }
    for applet in applets:
        files[f"bin/{applet}"] = File(link="busybox")
    return files


@dataclass
class Image:
    """The blobs of an image, ready to be written in either archive form."""

    layers: list[Layer]
    config: bytes
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def layer(self) -> Layer:
        return self.layers[0]

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def make_image(
    files: Mapping[str, File] | Sequence[Mapping[str, File]],
    *,
    cmd: tuple[str, ...] = ("/bin/sh",),
    arch: str = "amd64",
) -> Image:
    """An image of one layer (a mapping of files) or several (a list of them, base
    first; ``.wh.<name>`` and ``.wh..wh..opq`` entries are OCI whiteouts)."""
    layer_files = [files] if isinstance(files, Mapping) else list(files)
    layers = [make_layer(f) for f in layer_files]
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd)},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": "pycontainerd.images.build"} for _ in layers],
        },
        sort_keys=True,
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": mt.OCI_LAYER_GZIP, "digest": layer.digest, "size": len(layer.gz)}
                for layer in layers
            ],
        },
        sort_keys=True,
    ).encode()
    img = Image(layers, config, manifest)
    img.blobs = {layer.digest: layer.gz for layer in layers}
    img.blobs[config_digest] = config
    img.blobs[img.manifest_digest] = manifest
    return img


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = EPOCH
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(img: Image, path: Path, ref: str) -> None:
    """An OCI image layout in a tar, as ``ctr images export`` writes (index.json names
    the image with ``io.containerd.image.name`` and the short ref annotation)."""
    short = ref.rsplit(":", 1)[-1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mt.OCI_MANIFEST,
                    "digest": img.manifest_digest,
                    "size": len(img.manifest),
                    "annotations": {mt.ANNOTATION_IMAGE_NAME: ref, mt.ANNOTATION_REF_NAME: short},
                }
            ],
        },
        sort_keys=True,
    ).encode()
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION}).encode())
        _add(tar, "index.json", index)
        for dgst in sorted(img.blobs):
            alg, hexpart = dgst.split(":", 1)
            _add(tar, f"blobs/{alg}/{hexpart}", img.blobs[dgst])


def write_docker_archive(img: Image, path: Path, repo_tag: str) -> None:
    """Docker's ``docker save`` format: manifest.json, the config, one layer.tar."""
    layer_dir = img.layer.diff_id.split(":", 1)[1]
    config_name = img.config_digest.split(":", 1)[1] + ".json"
    manifest = json.dumps(
        [
            {
                "Config": config_name,
                "RepoTags": [repo_tag],
                "Layers": [f"{layer_dir}/layer.tar"],
            }
        ]
    ).encode()
    with tarfile.open(path, "w") as tar:
        _add(tar, "manifest.json", manifest)
        _add(tar, config_name, img.config)
        _add(tar, f"{layer_dir}/layer.tar", img.layer.tar)
        _add(
            tar,
            "repositories",
            json.dumps(
                {repo_tag.rsplit(":", 1)[0]: {repo_tag.rsplit(":", 1)[1]: layer_dir}}
            ).encode(),
        )
