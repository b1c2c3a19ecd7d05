"""The pure parts of image import/export: names, manifests, GC labels, tar reading."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from pycontainerd.client.types import Descriptor, DescriptorPlatform
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.images import archive
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.build import busybox_files, make_image, write_docker_archive

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("bb:2", "docker.io/library/bb:2"),
        ("foo/bar", "docker.io/foo/bar:latest"),
        ("localhost/x:1", "localhost/x:1"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("example.com/a/b:c", "example.com/a/b:c"),
        (f"x@{D1}", f"docker.io/library/x@{D1}"),
    ],
)
def test_normalize_reference(ref: str, full: str) -> None:
    assert archive.normalize_reference(ref) == full


@pytest.mark.parametrize("ref", ["", "Busybox", " x"])
def test_normalize_reference_rejects(ref: str) -> None:
    with pytest.raises(InvalidArgument):
        archive.normalize_reference(ref)


def test_reference_names() -> None:
    assert archive.oci_reference_name("docker.io/library/busybox:latest") == "latest"
    assert archive.oci_reference_name("localhost:5000/x:1") == "1"
    assert archive.oci_reference_name(f"docker.io/library/x@{D1}") == D1
    assert archive.familiar_name("docker.io/library/busybox:latest") == "busybox:latest"
    assert archive.familiar_name("docker.io/foo/bar:1") == "foo/bar:1"
    assert archive.familiar_name("example.com/a:1") == "example.com/a:1"


def test_image_name_as_ctr_import_names_it() -> None:
    full = {mt.ANNOTATION_IMAGE_NAME: "docker.io/library/a:1", mt.ANNOTATION_REF_NAME: "1"}
    assert archive.image_name(full, "base") == "docker.io/library/a:1"
    assert archive.image_name({mt.ANNOTATION_REF_NAME: "latest"}, "foo/bar") == "foo/bar:latest"
    assert archive.image_name({mt.ANNOTATION_REF_NAME: "example.com/x:1"}, "b") == "example.com/x:1"
    assert archive.image_name({}, "base") == ""


def test_gc_labels_of_manifest_and_index() -> None:
    manifest = {
        "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 1},
        "layers": [
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 2},
            {"mediaType": mt.OCI_LAYER, "digest": D3, "size": 3},
        ],
    }
    assert archive.gc_labels(manifest) == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D3,
    }
    index = {
        "manifests": [
            {"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 1},
            {"mediaType": mt.DOCKER_MANIFEST, "digest": D2, "size": 1},
            {"mediaType": "application/x-other", "digest": D3, "size": 1},
        ]
    }
    assert archive.gc_labels(index) == {
        "containerd.io/gc.ref.content.m.0": D1,
        "containerd.io/gc.ref.content.m.1": D2,
        "containerd.io/gc.ref.content.0": D3,
    }


def test_layer_media_type_from_magic() -> None:
    assert archive.layer_media_type(b"\x1f\x8b\x08") == mt.DOCKER_LAYER_GZIP
    assert archive.layer_media_type(b"\x1f\x8b\x08", oci=True) == mt.OCI_LAYER_GZIP
    assert archive.layer_media_type(b"\x28\xb5\x2f\xfd") == mt.OCI_LAYER_ZSTD
    assert archive.layer_media_type(b"bin/\x00\x00") == mt.DOCKER_LAYER


def test_parse_docker_manifest() -> None:
    data = json.dumps(
        [{"Config": "c.json", "RepoTags": ["a:1", "b:2"], "Layers": ["x/layer.tar"]}]
    ).encode()
    (entry,) = archive.parse_docker_manifest(data)
    assert entry == archive.DockerManifestEntry("c.json", ("a:1", "b:2"), ("x/layer.tar",))
    untagged = archive.parse_docker_manifest(b'[{"Config": "c", "RepoTags": null, "Layers": []}]')
    assert untagged[0].repo_tags == ()


@pytest.mark.parametrize("data", [b"nope", b'[{"Layers": []}]', b"{}", b"[1]"])
def test_parse_docker_manifest_rejects(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        archive.parse_docker_manifest(data)


def test_docker_manifest_is_schema2() -> None:
    config = Descriptor(mt.DOCKER_CONFIG, D1, 10)
    layer = Descriptor(mt.DOCKER_LAYER, D2, 20)
    doc = json.loads(archive.docker_manifest(config, [layer]))
    assert doc == {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": mt.DOCKER_LAYER, "digest": D2, "size": 20}],
    }


def test_export_index_annotates_names() -> None:
    target = Descriptor(mt.OCI_MANIFEST, D1, 5, platform=DescriptorPlatform("linux", "arm64", "v8"))
    doc = json.loads(archive.export_index([("docker.io/library/a:1", target)]))
    assert doc["mediaType"] == mt.OCI_INDEX
    (entry,) = doc["manifests"]
    assert entry["annotations"] == {
        mt.ANNOTATION_IMAGE_NAME: "docker.io/library/a:1",
        mt.ANNOTATION_REF_NAME: "1",
    }
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert Descriptor.from_json(entry).platform == target.platform


def test_blob_path() -> None:
    assert archive.blob_path(D1) == "blobs/sha256/" + "1" * 64
    with pytest.raises(InvalidArgument):
        archive.blob_path("md5:abc")


def test_archive_reads_members_and_resolves_symlinks(tmp_path: object) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("./manifest.json", b"[]"), ("a/layer.tar", b"LAYER")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../a/layer.tar"
        tar.addfile(link)
    buf.seek(0)
    arch = archive._Archive.open(buf)
    assert arch.read("manifest.json") == b"[]"
    assert arch.read("b/layer.tar") == b"LAYER"
    with pytest.raises(InvalidArgument):
        arch.read("a/layer.tar", limit=2)


def test_docker_archive_built_by_build_parses(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "d.tar"
    img = make_image(busybox_files())
    write_docker_archive(img, path, "bb:1")
    with open(path, "rb") as f:
        arch = archive._Archive.open(f)
        (entry,) = archive.parse_docker_manifest(arch.read("manifest.json"))
        assert entry.repo_tags == ("bb:1",)
        assert arch.read(entry.config) == img.config
        head = arch.head(entry.layers[0])
        assert archive.layer_media_type(head) == mt.DOCKER_LAYER
        assert archive._digest_member(arch, entry.layers[0]) == img.layer.diff_id
