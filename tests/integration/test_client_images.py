"""Images, content, snapshots and leases through pyctr and the Python client, against
our daemon and against Debian's containerd; archives exchanged with Debian's Go ctr."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.images import build
from tests.integration.conftest import Ctr
from tests.integration.registry import REGISTRY, Registry, run_registry
from tests.integration.test_snapshots import three_layers, tree

OCI_REF = "docker.io/library/three:oci"
DOCKER_TAG = "three:docker"
DOCKER_REF = "docker.io/library/three:docker"


def pyctr(address: Path, *args: str, input_bytes: bytes | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pycontainerd.cli.pyctr", "-a", str(address), *args],
        capture_output=True,
        input=input_bytes,
        timeout=120,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def ok(address: Path, *args: str, input_bytes: bytes | None = None) -> str:
    rc, out, err = pyctr(address, *args, input_bytes=input_bytes)
    assert rc == 0, f"pyctr {' '.join(args)} failed ({rc}):\n{err}"
    return out


@pytest.fixture
def image() -> build.Image:
    return build.make_image(three_layers())


@pytest.fixture
def archives(tmp_path: Path, image: build.Image) -> tuple[Path, Path]:
    oci, docker = tmp_path / "oci.tar", tmp_path / "docker.tar"
    build.write_oci_archive(image, oci, OCI_REF)
    single = build.make_image(build.busybox_files())
    build.write_docker_archive(single, docker, DOCKER_TAG)
    return oci, docker


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[list[tuple[Path, Path]]]:
    """Mount points (address, target) to unmount and remove even when a test fails."""
    points: list[tuple[Path, Path]] = []
    yield points
    for address, target in reversed(points):
        pyctr(address, "images", "unmount", "--rm", str(target))
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_import_oci_and_docker_archives(ctr: Ctr, archives: tuple[Path, Path]) -> None:
    oci, docker = archives
    out = ok(ctr.address, "images", "import", str(oci))
    assert OCI_REF in out
    ok(ctr.address, "images", "import", str(docker))
    listed = json.loads(ok(ctr.address, "images", "ls", "--format", "json"))
    by_name = {i["name"]: i for i in listed}
    assert set(by_name) == {OCI_REF, DOCKER_REF}
    assert by_name[DOCKER_REF]["target"]["mediaType"] == (
        "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert by_name[OCI_REF]["platforms"] == ["linux/amd64"]
    # Go ctr sees the same images, complete, with their layers unpacked
    assert set(ctr("images", "ls", "-q").stdout.split()) == {OCI_REF, DOCKER_REF}
    check = ctr("images", "check").stdout
    assert check.count("complete (") == 2 and "incomplete" not in check
    # three layers of the OCI image + the docker image's one layer
    snapshots = ctr("snapshots", "ls").stdout.splitlines()[1:]
    assert len(snapshots) == 4
    assert all("Committed" in line for line in snapshots)
    # the pyctr check agrees and reports them unpacked
    checked = json.loads(ok(ctr.address, "images", "check", "--format", "json"))
    assert all(c["status"] == "complete" and c["unpacked"] for c in checked)
    # the images survive a collection: gc labels hold content and snapshots
    lease = ok(ctr.address, "leases", "create").strip()
    ok(ctr.address, "leases", "rm", "--sync", lease)
    assert len(ctr("snapshots", "ls").stdout.splitlines()[1:]) == 4
    assert "incomplete" not in ctr("images", "check").stdout
    ok(ctr.address, "images", "rm", "--sync", OCI_REF, DOCKER_REF)
    assert ctr("snapshots", "ls").stdout.splitlines()[1:] == []


def test_export_with_pyctr_import_with_go_ctr(
    ctr: Ctr, reference: Ctr, archives: tuple[Path, Path], tmp_path: Path
) -> None:
    oci, docker = archives
    ok(ctr.address, "images", "import", "--no-unpack", str(oci))
    ok(ctr.address, "images", "import", "--no-unpack", str(docker))
    out = tmp_path / "export.tar"
    ok(ctr.address, "images", "export", str(out), OCI_REF, DOCKER_REF)
    reference("images", "import", str(out))
    assert set(reference("images", "ls", "-q").stdout.split()) == {OCI_REF, DOCKER_REF}
    assert "incomplete" not in reference("images", "check").stdout
    ours = json.loads(ok(ctr.address, "images", "ls", "--format", "json"))
    theirs = json.loads(ok(reference.address, "images", "ls", "--format", "json"))
    assert {(i["name"], i["target"]["digest"]) for i in ours} == {
        (i["name"], i["target"]["digest"]) for i in theirs
    }


def test_export_with_go_ctr_import_with_pyctr(
    ctr: Ctr, reference: Ctr, archives: tuple[Path, Path], tmp_path: Path
) -> None:
    oci, docker = archives
    reference("images", "import", str(oci))
    reference("images", "import", str(docker))
    out = tmp_path / "ctr-export.tar"
    reference("images", "export", str(out), OCI_REF, DOCKER_REF)
    ok(ctr.address, "images", "import", str(out))
    theirs = reference("images", "ls").stdout.splitlines()[1:]
    ours = ctr("images", "ls").stdout.splitlines()[1:]
    # REF TYPE DIGEST columns agree
    assert sorted(line.split()[:3] for line in ours) == sorted(line.split()[:3] for line in theirs)
    assert "incomplete" not in ctr("images", "check").stdout


def test_import_from_stdin_and_base_name(ctr: Ctr, image: build.Image, tmp_path: Path) -> None:
    oci = tmp_path / "short.tar"
    build.write_oci_archive(image, oci, "docker.io/library/x:v1")
    # strip the full-name annotation: only the short ref name "v1" is left
    buf = io.BytesIO()
    with tarfile.open(oci) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            data = f.read() if f is not None else b""
            if m.name == "index.json":
                idx = json.loads(data)
                del idx["manifests"][0]["annotations"]["io.containerd.image.name"]
                data = json.dumps(idx).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    ok(
        ctr.address,
        "images",
        "import",
        "--no-unpack",
        "--base-name",
        "foo/bar",
        "-",
        input_bytes=buf.getvalue(),
    )
    assert ok(ctr.address, "images", "ls", "-q").split() == ["foo/bar:v1"]


def test_mount_matches_go_ctr_on_containerd(
    ctr: Ctr,
    reference: Ctr,
    archives: tuple[Path, Path],
    tmp_path: Path,
    mounted: list[tuple[Path, Path]],
) -> None:
    oci, _ = archives
    ok(ctr.address, "images", "import", str(oci))
    reference("images", "import", str(oci))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    mounted.append((ctr.address, ours))
    assert ok(ctr.address, "images", "mount", OCI_REF, str(ours)).strip() == str(ours)
    theirs.mkdir()
    reference("images", "mount", OCI_REF, str(theirs))
    try:
        mine, ref_tree = tree(ours), tree(theirs)
    finally:
        reference("images", "unmount", "--rm", str(theirs))
    assert mine == ref_tree
    assert "opq/new" in mine and "opq/y" not in mine and "data/a" not in mine
    # the mount's view snapshot is held by a lease named after the target
    assert str(ours) in ok(ctr.address, "leases", "ls", "-q").split()
    ok(ctr.address, "images", "unmount", "--rm", str(ours))
    mounted.clear()
    assert str(ours) not in ok(ctr.address, "leases", "ls", "-q").split()
    assert str(ours) not in ctr("snapshots", "ls").stdout


def test_diff_id_mismatch_is_rejected_leaving_no_snapshot(ctr: Ctr, tmp_path: Path) -> None:
    img = build.make_image(build.busybox_files())
    bogus = "sha256:" + hashlib.sha256(b"not the layer").hexdigest()
    config = json.loads(img.config)
    config["rootfs"]["diff_ids"] = [bogus]
    img.config = json.dumps(config).encode()
    manifest = json.loads(img.manifest)
    manifest["config"]["digest"] = img.config_digest
    manifest["config"]["size"] = len(img.config)
    img.manifest = json.dumps(manifest).encode()
    img.blobs = {img.layer.digest: img.layer.gz, img.config_digest: img.config}
    img.blobs[img.manifest_digest] = img.manifest
    path = tmp_path / "bad.tar"
    build.write_oci_archive(img, path, "docker.io/library/bad:1")
    rc, _, err = pyctr(ctr.address, "images", "import", str(path))
    assert rc == 1
    assert "wrong diff id" in err and bogus in err and img.layer.diff_id in err
    assert ctr("snapshots", "ls").stdout.splitlines()[1:] == []
    # the layer did not get an uncompressed label
    info = json.loads(ok(ctr.address, "content", "ls", "--format", "json"))
    layer = next(i for i in info if i["digest"] == img.layer.digest)
    assert "containerd.io/uncompressed" not in layer["labels"]


@pytest.fixture(params=["pycontainerd", "containerd"])
def any_daemon(request: pytest.FixtureRequest) -> Ctr:
    name = "ctr" if request.param == "pycontainerd" else "reference"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_content_snapshots_leases_commands(any_daemon: Ctr, tmp_path: Path) -> None:
    a = any_daemon.address
    # leases: created, listed, holding what is written under it
    assert ok(a, "leases", "create", "--id", "l1", "--expires", "1h", "k=v").strip() == "l1"
    leases = json.loads(ok(a, "leases", "ls", "--format", "json"))
    (l1,) = [x for x in leases if x["id"] == "l1"]
    assert l1["labels"]["k"] == "v" and "containerd.io/gc.expire" in l1["labels"]

    # content: ingest from stdin, list, read back, label, remove
    data = b"hello pyctr\n" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ok(
        a,
        "content",
        "ingest",
        "--expected-digest",
        digest,
        "--expected-size",
        str(len(data)),
        "ref1",
        input_bytes=data,
    )
    assert digest in ok(a, "content", "ls", "-q").split()
    assert any_daemon("content", "ls", "-q").stdout.split().count(digest) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "pycontainerd.cli.pyctr", "-a", str(a), "content", "get", digest],
        capture_output=True,
        check=True,
    )
    assert proc.stdout == data
    ok(a, "content", "label", digest, "a=b")
    assert "a=b" in any_daemon("content", "ls").stdout
    rc, _, err = pyctr(
        a, "content", "ingest", "--expected-digest", "sha256:" + "0" * 64, "ref2", input_bytes=b"x"
    )
    assert rc == 1 and "digest" in err
    # the failed ingest may be left behind; abort drops it
    if "ref2" in ok(a, "content", "active"):
        ok(a, "content", "abort", "ref2")
    assert "ref2" not in ok(a, "content", "active")
    ok(a, "content", "rm", digest)
    assert digest not in any_daemon("content", "ls", "-q").stdout

    # snapshots: prepare, commit, view, info, label, usage, remove
    s = ("snapshots", "--snapshotter", "overlayfs")
    ok(a, *s, "prepare", "act")
    ok(a, *s, "commit", "base", "act")
    ok(a, *s, "view", "v1", "base")
    mounts = ok(a, *s, "mounts", "/mnt/x", "v1")
    assert mounts.startswith("mount -t ") and "/mnt/x" in mounts
    info = json.loads(ok(a, *s, "info", "v1"))
    assert info["Kind"] == "View" and info["Parent"] == "base"
    # a gc root: containerd collects an unreferenced snapshot once v1 is removed
    ok(a, *s, "label", "base", "x=y", "containerd.io/gc.root=test")
    assert json.loads(ok(a, *s, "info", "base"))["Labels"]["x"] == "y"
    assert "base" in ok(a, *s, "usage")
    listed = {i["Name"]: i for i in json.loads(ok(a, *s, "ls", "--format", "json"))}
    assert set(listed) == {"base", "v1"}
    # Go ctr sees what pyctr made
    assert {line.split()[0] for line in any_daemon(*s, "ls").stdout.splitlines()[1:]} == {
        "base",
        "v1",
    }
    ok(a, *s, "rm", "v1")
    ok(a, *s, "rm", "base")
    assert ok(a, *s, "ls").splitlines()[1:] == []

    ok(a, "leases", "rm", "--sync", "l1")
    assert "l1" not in ok(a, "leases", "ls", "-q").split()
    rc, _, err = pyctr(a, "leases", "rm", "l1")
    assert rc == 1 and "not found" in err


async def test_python_client_resume_lease_and_unpack(
    daemon: harness.Daemon, archives: tuple[Path, Path]
) -> None:
    from pycontainerd.client.aio import AsyncClient
    from pycontainerd.images.archive import import_archive
    from pycontainerd.images.unpack import unpack_image

    data = bytes(range(256)) * 4096
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with AsyncClient(str(daemon.address)) as c:
        async with c.lease() as lease:
            # a writer that stops half-way leaves an ingest the next one resumes
            async with c.content.writer("resume-me", len(data), digest) as w:
                assert w.offset == 0
                await w.write(data[:300_000])
            assert (await c.content.status("resume-me")).offset == 300_000
            desc = await c.content.write_blob("resume-me", data, expected=digest)
            assert (desc.digest, desc.size) == (digest, len(data))
            assert await c.content.read_all(digest) == data
            chunks = [x async for x in c.content.read(digest, offset=len(data) - 10)]
            assert b"".join(chunks) == data[-10:]
            held = await c.leases.resources(lease.id)
            assert ("content", digest) in {(r.type, r.id) for r in held}

            (imported,) = await import_archive(c, archives[0], unpack=False)
            top = await unpack_image(c, imported.image.name, imported.image.target)
            # unpacking again finds every layer committed and changes nothing
            before = await c.snapshots().list()
            assert await unpack_image(c, imported.image.name, imported.image.target) == top
            assert await c.snapshots().list() == before
            config = (await c.images.manifest(imported.image.target)).config_descriptor
            labels = (await c.content.info(config.digest)).labels
            assert labels["containerd.io/gc.ref.snapshot.overlayfs"] == top
        # the lease is gone with the block
        assert lease.id not in {x.id for x in await c.leases.list()}


def test_blocking_client_lease_holds_what_is_written(daemon: harness.Daemon) -> None:
    from pycontainerd.client import Client

    with Client(str(daemon.address)) as c:
        with c.lease() as lease:
            desc = c.content.write_blob("blocking", b"hello")
            held = c.leases.resources(lease.id)
            assert [(r.type, r.id) for r in held] == [("content", desc.digest)]
        assert c.leases.list() == []
        assert c.aio.default_lease is None


def _multi_platform_archive(path: Path, name: str) -> tuple[build.Image, build.Image]:
    """An OCI layout whose image is an index of a linux/amd64 and a linux/arm64 manifest."""
    amd = build.make_image(build.busybox_files(), arch="amd64")
    arm = build.make_image({"hello": build.File(b"arm\n")}, arch="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": img.manifest_digest,
                    "size": len(img.manifest),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for img, arch in ((arm, "arm64"), (amd, "amd64"))
            ],
        }
    ).encode()
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    top = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": index_digest,
                    "size": len(index),
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    ).encode()
    with tarfile.open(path, "w") as tar:
        blobs = {**amd.blobs, **arm.blobs, index_digest: index}
        files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": top}
        files.update({"blobs/sha256/" + d.split(":")[1]: b for d, b in blobs.items()})
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return amd, arm


def test_multi_platform_index_imports_the_host_platform(ctr: Ctr, tmp_path: Path) -> None:
    name = "docker.io/library/multi:1"
    path = tmp_path / "multi.tar"
    amd, arm = _multi_platform_archive(path, name)
    ok(ctr.address, "images", "import", str(path))
    (listed,) = json.loads(ok(ctr.address, "images", "ls", "--format", "json"))
    assert listed["target"]["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted(listed["platforms"]) == ["linux/amd64", "linux/arm64"]
    blobs = set(ok(ctr.address, "content", "ls", "-q").split())
    assert {amd.manifest_digest, amd.config_digest, amd.layer.digest} <= blobs
    assert arm.config_digest not in blobs and arm.layer.digest not in blobs
    # containerd's check (this host's platform) finds it complete, and it is unpacked
    assert "complete (" in ctr("images", "check").stdout
    snapshots = ctr("snapshots", "ls").stdout.splitlines()[1:]
    assert [line.split()[0] for line in snapshots] == [amd.layer.diff_id]

    # another namespace asks for arm64 only
    ok(ctr.address, "-n", "arm", "images", "import", "--platform", "linux/arm64", str(path))
    arm_blobs = set(ok(ctr.address, "-n", "arm", "content", "ls", "-q").split())
    assert arm.config_digest in arm_blobs and amd.config_digest not in arm_blobs
    arm_snapshots = ctr("snapshots", "ls", namespace="arm").stdout.splitlines()[1:]
    assert [line.split()[0] for line in arm_snapshots] == [arm.layer.diff_id]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


def test_pyctr_push_then_pull(ctr: Ctr, registry: Registry, archives: tuple[Path, Path]) -> None:
    oci, _ = archives
    ok(ctr.address, "images", "import", "--no-unpack", str(oci))
    remote = f"{registry.host}/h7/three:v1"
    out = ok(ctr.address, "images", "push", "--plain-http", remote, OCI_REF)
    assert out.startswith(f"{remote}: sha256:")
    out = ok(
        ctr.address, "-n", "pulled", "images", "pull", "--plain-http", "--print-chainid", remote
    )
    assert "image chain ID: sha256:" in out
    assert "complete (" in ctr("images", "check", namespace="pulled").stdout
    assert len(ctr("snapshots", "ls", namespace="pulled").stdout.splitlines()[1:]) == 3
    rc, _, err = pyctr(ctr.address, "images", "pull", "--plain-http", f"{registry.host}/h7/none:v1")
    assert rc == 1 and "not found" in err
