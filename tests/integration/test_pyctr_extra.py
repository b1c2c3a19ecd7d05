"""pyctr commands added to match ctr 1.6: content fetch/edit/prune, snapshots
diff/unpack, images convert, and progress output that is plain when it goes to a pipe.

Where ctr's output is deterministic (convert and diff digests, edit digests), Debian's Go
``ctr`` runs the same command against the same daemon and the results must agree.

Two daemon limits shape the order of these tests: the diff service fails when the diff's
blob is already in the store (containerd's walking differ takes that as success), so each
diff asks for a different blob; and a Go client's commit of a blob that already exists
fails with "reference : not found" instead of AlreadyExists, so Go ctr converts first.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycontainerd.images import build
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.unpack import chain_ids
from tests.integration.conftest import Ctr
from tests.integration.registry import REGISTRY, Registry, run_registry
from tests.integration.test_snapshots import three_layers

REF = "docker.io/library/three:v1"


def pyctr(
    address: Path, *args: str, input_bytes: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pycontainerd.cli.pyctr", "-a", str(address), *args],
        capture_output=True,
        input=input_bytes,
        timeout=120,
        env=env,
    )
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def ok(address: Path, *args: str, **kwargs: object) -> str:
    rc, out, err = pyctr(address, *args, **kwargs)  # type: ignore[arg-type]
    assert rc == 0, f"pyctr {' '.join(args)} failed ({rc}):\n{err}"
    return out.decode()


def blob_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layout(path: Path, name: str, root: bytes, blobs: dict[str, bytes]) -> None:
    """An OCI layout tar whose index.json names ``root`` (any manifest or index)."""
    doc = json.loads(root)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": doc["mediaType"],
                "digest": blob_digest(root),
                "size": len(root),
                "annotations": {mt.ANNOTATION_IMAGE_NAME: name},
            }
        ],
    }
    with tarfile.open(path, "w") as tar:
        files = {
            "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps(index).encode(),
            **{
                "blobs/sha256/" + d.split(":", 1)[1]: b
                for d, b in {**blobs, blob_digest(root): root}.items()
            },
        }
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def docker_typed(img: build.Image, arch: str) -> tuple[bytes, dict[str, bytes]]:
    """``img`` re-described with Docker schema 2 media types (gzip layers), with an
    annotation on a layer: only OCI descriptors may keep one after a conversion."""
    config = json.loads(img.config)
    config["architecture"] = arch
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {
            "mediaType": mt.DOCKER_CONFIG,
            "size": len(config_bytes),
            "digest": blob_digest(config_bytes),
        },
        "layers": [
            {
                "mediaType": mt.DOCKER_LAYER_GZIP,
                "size": len(layer.gz),
                "digest": layer.digest,
                "annotations": {"x.test/who": "a<b&c"},
            }
            for layer in img.layers
        ],
    }
    blobs = {layer.digest: layer.gz for layer in img.layers}
    blobs[blob_digest(config_bytes)] = config_bytes
    return json.dumps(manifest, indent=3).encode(), blobs


def docker_list(path: Path, name: str) -> None:
    """A Docker manifest list of a linux/amd64 and a linux/arm64 image."""
    amd, amd_blobs = docker_typed(build.make_image(three_layers()), "amd64")
    arm, arm_blobs = docker_typed(build.make_image({"hello": build.File(b"arm\n")}), "arm64")
    listing = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST_LIST,
        "manifests": [
            {
                "mediaType": mt.DOCKER_MANIFEST,
                "size": len(m),
                "digest": blob_digest(m),
                "platform": {"architecture": arch, "os": "linux"},
            }
            for m, arch in ((arm, "arm64"), (amd, "amd64"))
        ],
    }
    blobs = {**amd_blobs, **arm_blobs, blob_digest(amd): amd, blob_digest(arm): arm}
    write_layout(path, name, json.dumps(listing).encode(), blobs)


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def target_of(ctr: Ctr, name: str) -> str:
    for line in ctr("images", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == name:
            return fields[2]
    raise AssertionError(f"no image {name}")


# -- pure helpers (no daemon) ---------------------------------------------------------------


def test_go_json_and_label_helpers() -> None:
    from pycontainerd.cli.ctr_content import is_layer_label, validate
    from pycontainerd.errdefs import InvalidArgument
    from pycontainerd.images.convert import _go_json, go_manifest

    # Go's encoding/json: struct order, sorted maps, HTML escapes, nil slices as null.
    doc = go_manifest(
        {
            "layers": [],
            "annotations": {"z": "1", "a": "<&>"},
            "config": {"size": 2, "digest": "sha256:c", "mediaType": "t", "extra": 1},
            "schemaVersion": 2,
        }
    )
    assert _go_json(doc) == (
        b'{"schemaVersion":2,"config":{"mediaType":"t","digest":"sha256:c","size":2},'
        b'"layers":null,"annotations":{"a":"\\u003c\\u0026\\u003e","z":"1"}}'
    )
    assert is_layer_label("containerd.io/gc.ref.content.l.3")
    assert is_layer_label("containerd.io/gc.ref.content.2")
    assert not is_layer_label("containerd.io/gc.ref.content.0")
    assert not is_layer_label("containerd.io/gc.ref.content.config")
    assert not is_layer_label("containerd.io/gc.ref.content.m.1")
    validate(b'{"schemaVersion":2,"manifests":[]}', mt.OCI_INDEX)
    for data, kind in (
        (b"[]", mt.OCI_MANIFEST),
        (b'{"schemaVersion":2}', mt.OCI_MANIFEST),
        (b"{", "json"),
        (b"{}", "text/plain"),
    ):
        with pytest.raises(InvalidArgument):
            validate(data, kind)


# -- content edit ------------------------------------------------------------------------


def test_content_edit(ctr: Ctr, tmp_path: Path) -> None:
    data = json.dumps({"mediaType": "x", "word": "alpha"}).encode()
    ok(
        ctr.address,
        "content",
        "ingest",
        "--expected-digest",
        blob_digest(data),
        "in",
        input_bytes=data,
    )
    editor = tmp_path / "ed.sh"
    # Rewrites the file in place: Go ctr reads back through the descriptor it had open,
    # so an editor that replaces the file (sed -i) would go unseen by it.
    editor.write_text('#!/bin/sh\nt=$(sed \'s/alpha/omega/\' "$1") && printf %s "$t" > "$1"\n')
    editor.chmod(0o755)
    edited = data.replace(b"alpha", b"omega")

    # Go ctr first (it fails on a blob that exists), through $EDITOR; then pyctr, also
    # with an editor that replaces the file.
    env = {"EDITOR": str(editor), "PATH": "/usr/bin:/bin"}
    go = subprocess.run(
        ["ctr", "-a", str(ctr.address), "content", "edit", blob_digest(data)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert go.returncode == 0 and go.stdout.decode().strip() == blob_digest(edited)
    out = ok(ctr.address, "content", "edit", "--editor", str(editor), blob_digest(data))
    assert out.strip() == blob_digest(edited)
    replacing = tmp_path / "sed.sh"
    replacing.write_text("#!/bin/sh\nsed -i 's/alpha/omega/' \"$1\"\n")
    replacing.chmod(0o755)
    out = ok(ctr.address, "content", "edit", "--editor", str(replacing), blob_digest(data))
    assert out.strip() == blob_digest(edited)
    out = ok(ctr.address, "content", "edit", blob_digest(data), env=env)
    assert out.strip() == blob_digest(edited)
    rc, got, _ = pyctr(ctr.address, "content", "get", blob_digest(edited))
    assert rc == 0 and got == edited

    # --validate: a broken result is refused and nothing is written.
    breaker = tmp_path / "break.sh"
    breaker.write_text("#!/bin/sh\nprintf '{broken' > \"$1\"\n")
    breaker.chmod(0o755)
    before = set(ok(ctr.address, "content", "ls", "-q").split())
    rc, _, err = pyctr(
        ctr.address,
        "content",
        "edit",
        "--validate",
        "json",
        "--editor",
        str(breaker),
        blob_digest(data),
    )
    assert rc == 1 and "not valid JSON" in err
    rc, _, err = pyctr(
        ctr.address,
        "content",
        "edit",
        "--validate",
        mt.OCI_MANIFEST,
        "--editor",
        str(editor),
        blob_digest(data),
    )
    assert rc == 1 and "mediaType 'x'" in err
    assert set(ok(ctr.address, "content", "ls", "-q").split()) == before
    assert "edit-" not in ok(ctr.address, "content", "active")
    # A failing editor is an error too.
    rc, _, err = pyctr(ctr.address, "content", "edit", "--editor", "false", blob_digest(data))
    assert rc == 1 and "exited with status 1" in err


# -- snapshots unpack and diff ------------------------------------------------------------


def diff(ctr: Ctr, *args: str) -> bytes:
    rc, out, err = pyctr(ctr.address, "snapshots", "diff", *args)
    assert rc == 0, err
    return out


def test_snapshots_unpack_and_diff(ctr: Ctr, tmp_path: Path) -> None:
    img = build.make_image(three_layers())
    archive = tmp_path / "three.tar"
    build.write_oci_archive(img, archive, REF)
    ctr("images", "import", "--no-unpack", str(archive))
    rc, _, err = pyctr(ctr.address, "snapshots", "unpack", "sha256:" + "0" * 64)
    assert rc == 1 and "manifest not found" in err
    out = ok(ctr.address, "snapshots", "unpack", img.manifest_digest)
    assert out == f"unpacking {img.manifest_digest} ({mt.OCI_MANIFEST})...done\n"
    chain = chain_ids([layer.diff_id for layer in img.layers])
    names = {line.split()[0] for line in ctr("snapshots", "ls").stdout.splitlines()[1:]}
    assert names == set(chain)

    # The diff of layer 2 against its parent: its whiteout and new files. Go ctr asks
    # the same daemon for it as a plain tar, pyctr as gzip (the default): the same tar.
    go = subprocess.run(
        [
            "ctr",
            "-a",
            str(ctr.address),
            "snapshots",
            "diff",
            "--media-type",
            mt.OCI_LAYER,
            chain[1],
        ],
        capture_output=True,
        timeout=60,
    )
    assert go.returncode == 0, go.stderr
    plain = gzip.decompress(diff(ctr, chain[1]))
    assert plain == go.stdout
    members = tar_names(plain)
    assert "data/.wh.a" in members and "data/c" in members and "opq/new" in members
    # Two snapshots; an active snapshot with nothing written.
    names_ab = tar_names(diff(ctr, "--media-type", mt.OCI_LAYER, chain[0], chain[2]))
    assert "data/c" in names_ab and "data/.wh.a" in names_ab
    ctr("snapshots", "prepare", "work", chain[2])
    assert tar_names(diff(ctr, "--media-type", mt.OCI_LAYER, "work")) == []

    # Without --keep the blob is left to the collector; with it, it is a gc root.
    kept_bytes = diff(
        ctr, "--keep", "-l", "who=me", "--ref", "d1", "--media-type", mt.OCI_LAYER, chain[2]
    )
    kept = [
        line
        for line in ok(ctr.address, "content", "ls").splitlines()
        if "containerd.io/gc.root=" in line
    ]
    assert len(kept) == 1 and "who=me" in kept[0] and kept[0].startswith(blob_digest(kept_bytes))
    # No temporary views or leases are left behind.
    after = {line.split()[0] for line in ctr("snapshots", "ls").stdout.splitlines()[1:]}
    assert after == {*chain, "work"}
    assert ctr("leases", "ls").stdout.splitlines()[1:] == []
    rc, _, err = pyctr(ctr.address, "snapshots", "diff", "nope")
    assert rc == 1 and "not found" in err


# -- images convert -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ("--oci",),
        ("--uncompress",),
        ("--oci", "--uncompress", "--all-platforms"),
        ("--uncompress", "--platform", "linux/arm64"),
    ],
)
def test_images_convert_matches_ctr(ctr: Ctr, tmp_path: Path, flags: tuple[str, ...]) -> None:
    archive = tmp_path / "list.tar"
    docker_list(archive, "docker.io/library/list:v1")
    ctr("images", "import", "--all-platforms", "--no-unpack", str(archive))
    src = "docker.io/library/list:v1"
    # Go ctr first: our daemon refuses a Go client's commit of a blob that exists.
    go = ctr("images", "convert", *flags, src, "go:v1").stdout
    out = ok(ctr.address, "images", "convert", *flags, src, "py:v1")
    assert out.strip() == go.strip()
    assert target_of(ctr, "py:v1") == out.strip()
    # Every blob of the new image is there (ctr's check walks the wanted platform).
    wanted = ["--platform", "linux/arm64"] if "--platform" in flags else []
    check = ok(ctr.address, "images", "check", *wanted, "name==py:v1")
    assert "complete (" in check, check
    index = json.loads(ok(ctr.address, "content", "get", out.strip()))
    if "--oci" in flags:
        assert index["mediaType"] == mt.OCI_INDEX
    kept = [m["platform"]["architecture"] for m in index["manifests"]]
    if "--all-platforms" in flags:
        assert kept == ["arm64", "amd64"]
    elif "--platform" in flags:
        assert kept == ["arm64"]
    else:
        assert kept == ["amd64"]
    manifest = json.loads(ok(ctr.address, "content", "get", index["manifests"][-1]["digest"]))
    layer_types = {layer["mediaType"] for layer in manifest["layers"]}
    expected = {
        (True, False): mt.OCI_LAYER_GZIP,
        (False, True): mt.DOCKER_LAYER,
        (True, True): mt.OCI_LAYER,
    }[("--oci" in flags, "--uncompress" in flags)]
    assert layer_types == {expected}
    # Only an OCI descriptor keeps its annotations.
    assert all(("annotations" in layer) == ("--oci" in flags) for layer in manifest["layers"])


def test_images_convert_single_manifest_and_in_place(ctr: Ctr, tmp_path: Path) -> None:
    img = build.make_image(three_layers())
    archive = tmp_path / "three.tar"
    build.write_oci_archive(img, archive, REF)
    ctr("images", "import", str(archive))
    # Nothing to do: the target stays.
    assert (
        ok(ctr.address, "images", "convert", "--oci", REF, "same:v1").strip() == img.manifest_digest
    )
    # Fresh uncompressed layers, written by pyctr alone; the result is complete and
    # unpacks (its layers are their own diff IDs).
    other = build.make_image(build.busybox_files())
    build.write_oci_archive(other, tmp_path / "bb.tar", "docker.io/library/bb:v1")
    ctr("images", "import", "--no-unpack", str(tmp_path / "bb.tar"))
    fresh = ok(
        ctr.address, "images", "convert", "--uncompress", "docker.io/library/bb:v1", "plain:v1"
    )
    assert "complete (3/3)" in ok(ctr.address, "images", "check", "name==plain:v1")
    out = ok(ctr.address, "snapshots", "--snapshotter", "native", "unpack", fresh.strip())
    assert out.endswith("...done\n")
    go = ctr("images", "convert", "--uncompress", "same:v1", "go:v1").stdout.strip()
    out = ok(ctr.address, "images", "convert", "--uncompress", REF, REF).strip()
    assert out == go
    assert target_of(ctr, REF) == out
    manifest = json.loads(ok(ctr.address, "content", "get", out))
    for layer, built in zip(manifest["layers"], img.layers, strict=True):
        assert layer["digest"] == built.diff_id and layer["mediaType"] == mt.OCI_LAYER
    rc, _, err = pyctr(ctr.address, "images", "convert", "--oci", "nope:v1", "x:v1")
    assert rc == 1 and "not found" in err


def test_content_prune_references(ctr: Ctr, tmp_path: Path) -> None:
    img = build.make_image(three_layers())
    build.write_oci_archive(img, tmp_path / "three.tar", REF)
    ctr("images", "import", "--no-unpack", str(tmp_path / "three.tar"))
    layers = {layer.digest for layer in img.layers}
    out = ok(ctr.address, "content", "prune", "references", "--dry")
    assert out.count("would remove containerd.io/gc.ref.content.l.") == 3
    assert layers <= set(ok(ctr.address, "content", "ls", "-q").split())
    out = ok(ctr.address, "content", "prune", "references")
    assert out.count("removing containerd.io/gc.ref.content.l.") == 3
    # The synchronous collection took the layers nothing refers to any more.
    left = set(ok(ctr.address, "content", "ls", "-q").split())
    assert not layers & left and {img.manifest_digest, img.config_digest} <= left
    assert "gc.ref.content.l." not in ok(ctr.address, "content", "ls")


def test_against_debian_containerd(reference: Ctr, tmp_path: Path) -> None:
    """The new commands work against containerd itself, and agree with its ctr there."""
    archive = tmp_path / "list.tar"
    docker_list(archive, "docker.io/library/list:v1")
    reference("images", "import", "--all-platforms", "--no-unpack", str(archive))
    flags = ("--oci", "--uncompress", "--all-platforms")
    src = "docker.io/library/list:v1"
    out = ok(reference.address, "images", "convert", *flags, src, "py:v1").strip()
    assert out == reference("images", "convert", *flags, src, "go:v1").stdout.strip()

    img = build.make_image(three_layers())
    build.write_oci_archive(img, tmp_path / "three.tar", REF)
    reference("images", "import", "--no-unpack", str(tmp_path / "three.tar"))
    out = ok(reference.address, "snapshots", "unpack", img.manifest_digest)
    assert out.endswith("...done\n")
    chain = chain_ids([layer.diff_id for layer in img.layers])
    plain = gzip.decompress(diff(reference, chain[1]))
    # containerd's diffs are not byte-stable between runs (times): compare the entries.
    assert tar_names(plain) == tar_names(diff(reference, "--media-type", mt.OCI_LAYER, chain[1]))
    assert "data/.wh.a" in tar_names(plain)

    editor = tmp_path / "ed.sh"
    editor.write_text('#!/bin/sh\nprintf edited > "$1"\n')
    editor.chmod(0o755)
    out = ok(reference.address, "content", "edit", "--editor", str(editor), img.config_digest)
    assert out.strip() == blob_digest(b"edited")


# -- content fetch and progress ---------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


def test_content_fetch_and_plain_progress(ctr: Ctr, registry: Registry, tmp_path: Path) -> None:
    img = build.make_image(three_layers())
    archive = tmp_path / "three.tar"
    build.write_oci_archive(img, archive, REF)
    ctr("images", "import", "--no-unpack", str(archive))
    remote = f"{registry.host}/extra/three:v1"
    rc, out, err = pyctr(ctr.address, "images", "push", "--plain-http", remote, REF)
    assert rc == 0, err
    # Piped output: plain lines, no terminal escapes, progress on stderr.
    assert b"\x1b" not in out and "\x1b" not in err
    assert out.decode() == f"{remote}: {img.manifest_digest}\n"

    rc, out, err = pyctr(ctr.address, "-n", "fetched", "content", "fetch", "--plain-http", remote)
    assert rc == 0, err
    assert b"\x1b" not in out and "\x1b" not in err
    assert out.decode() == f"{remote}: {img.manifest_digest}\n"
    lines = err.splitlines()
    assert f"layer-{img.layers[0].digest}: done ({build_size(img.layers[0].gz)})" in lines
    fetched = set(ok(ctr.address, "-n", "fetched", "content", "ls", "-q").split())
    assert fetched == set(img.blobs)
    # As ctr: an image record, no snapshots.
    assert ctr("images", "ls", "-q", namespace="fetched").stdout.split() == [remote]
    assert ctr("snapshots", "ls", namespace="fetched").stdout.splitlines()[1:] == []
    # Go ctr fetching the same image into another namespace gets the same blobs.
    ctr("content", "fetch", "--plain-http", remote, namespace="gofetched")
    assert set(ctr("content", "ls", "-q", namespace="gofetched").stdout.split()) == fetched

    # A pull into a pipe is plain too.
    rc, out, err = pyctr(ctr.address, "-n", "pulled", "images", "pull", "--plain-http", remote)
    assert rc == 0, err
    assert b"\x1b" not in out and "\x1b" not in err and err.count(": done") >= 5
    # On a terminal the progress is rich's live bars; stdout stays plain.
    rc, out, tty = run_with_tty_stderr(
        ctr.address, "-n", "tty", "content", "fetch", "--plain-http", remote
    )
    assert rc == 0, tty
    assert out.decode() == f"{remote}: {img.manifest_digest}\n"
    assert b"\x1b[" in tty and b"layer-sha256:" in tty

    rc, _, err = pyctr(
        ctr.address, "content", "fetch", "--plain-http", f"{registry.host}/extra/none:v1"
    )
    assert rc == 1 and "not found" in err


def test_content_push_and_fetch_object(ctr: Ctr, registry: Registry, tmp_path: Path) -> None:
    img = build.make_image(three_layers())
    build.write_oci_archive(img, tmp_path / "three.tar", REF)
    ctr("images", "import", "--no-unpack", str(tmp_path / "three.tar"))
    remote = f"{registry.host}/objects/three:v1"
    # Blob by blob, then the manifest under the tag: a whole image in the registry.
    objects = [(layer.digest, mt.OCI_LAYER_GZIP) for layer in img.layers]
    objects += [(img.config_digest, mt.OCI_CONFIG), (img.manifest_digest, mt.OCI_MANIFEST)]
    for digest, media_type in objects:
        out = ok(ctr.address, "content", "push-object", "--plain-http", remote, digest, media_type)
        assert out == f"Pushed {digest} {media_type}\n"
    rc, got, err = pyctr(ctr.address, "content", "fetch-object", "--plain-http", remote)
    assert rc == 0 and got == img.manifest, err
    go = subprocess.run(
        ["ctr", "-a", str(ctr.address), "content", "fetch-object", "--plain-http", remote],
        capture_output=True,
        timeout=60,
    )
    assert go.returncode == 0 and go.stdout == got
    # The registry has every blob: a pull elsewhere completes and unpacks.
    ok(ctr.address, "-n", "pulled", "images", "pull", "--plain-http", remote)
    assert "complete (5/5)" in ok(ctr.address, "-n", "pulled", "images", "check")
    rc, _, err = pyctr(
        ctr.address, "content", "push-object", "--plain-http", remote, "sha256:x", "y"
    )
    assert rc == 1 and "not a digest" in err


def run_with_tty_stderr(address: Path, *args: str) -> tuple[int, bytes, bytes]:
    """pyctr with stderr on a pseudo-terminal (stdout still a pipe)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pycontainerd.cli.pyctr", "-a", str(address), *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"},
    )
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child's side is closed
                return
            if not data:
                return
            seen.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        os.close(master)
    return proc.returncode, out, b"".join(seen)


def build_size(data: bytes) -> str:
    from pycontainerd.cli.shared import human_size

    return human_size(len(data))
