"""Content, images, leases and garbage collection, driven by Debian's Go ctr."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from pycontainerd import harness
from pycontainerd._api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from pycontainerd._api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from pycontainerd._api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from pycontainerd._api.containerd.services.namespaces.v1 import namespace_pb2
from pycontainerd.images import build
from tests.integration.conftest import CTR, TEST_CONFIG, Ctr

BIG = 256 << 20


@pytest.fixture(scope="module")
def big_blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("blob") / "big"
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(BIG >> 20):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    return path, "sha256:" + h.hexdigest()


def blob_files(daemon: harness.Daemon) -> set[str]:
    root = daemon.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir()} if root.exists() else set()


def _ls_digests(ctr: Ctr, ns: str = "default") -> dict[str, str]:
    rows = ctr("content", "ls", namespace=ns).stdout.splitlines()[1:]
    return {r.split("\t")[0]: r.split("\t")[-1] for r in rows}


@pytest.fixture
def channel(daemon: harness.Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{daemon.address}") as ch:
        yield ch


def md(ns: str = "default", lease: str | None = None) -> list[tuple[str, str]]:
    out = [("containerd-namespace", ns)]
    if lease:
        out.append(("containerd-lease", lease))
    return out


def write_blob(
    ch: grpc.Channel,
    data: bytes,
    *,
    ref: str,
    ns: str = "default",
    lease: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    stub = content_pb2_grpc.ContentStub(ch)
    reqs = [
        content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=ref),
        content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT,
            ref=ref,
            offset=0,
            data=data,
            total=len(data),
            expected=dgst,
            labels=labels or {},
        ),
    ]
    list(stub.Write(iter(reqs), metadata=md(ns, lease), timeout=30))
    return dgst


def test_ingest_get_label_rm_256mib(
    ctr: Ctr, daemon: harness.Daemon, big_blob: tuple[Path, str]
) -> None:
    path, dgst = big_blob
    with path.open("rb") as f:
        subprocess.run(
            [
                str(CTR),
                "-a",
                str(ctr.address),
                "content",
                "ingest",
                "--expected-digest",
                dgst,
                "--expected-size",
                str(BIG),
                "big-ref",
            ],
            stdin=f,
            check=True,
            timeout=300,
        )
    assert dgst in _ls_digests(ctr)
    assert dgst in blob_files(daemon)
    blob = daemon.root / "io.containerd.content.v1.content/blobs/sha256" / dgst.split(":")[1]
    assert oct(blob.stat().st_mode & 0o777) == "0o444"
    got = subprocess.run(
        [str(CTR), "-a", str(ctr.address), "content", "get", dgst],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    assert len(got) == BIG and "sha256:" + hashlib.sha256(got).hexdigest() == dgst
    ctr("content", "label", dgst, "a=b", "c=d")
    assert set(_ls_digests(ctr)[dgst].split(",")) == {"a=b", "c=d"}
    ctr("content", "label", dgst, "a=")
    assert _ls_digests(ctr)[dgst] == "c=d"
    ctr("content", "rm", dgst)
    assert dgst not in _ls_digests(ctr)
    # content is namespaced: another namespace never saw it
    assert ctr("content", "get", dgst, namespace="other", check=False).returncode != 0


def test_wrong_digest_or_size_is_rejected_and_leaves_no_blob(
    ctr: Ctr, daemon: harness.Daemon
) -> None:
    data = os.urandom(4096)
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    res = ctr("content", "ingest", "--expected-digest", wrong, "w1", input_bytes=data, check=False)
    assert res.returncode != 0 and "failed precondition" in res.stderr
    res = ctr("content", "ingest", "--expected-size", "10", "w2", input_bytes=data, check=False)
    assert res.returncode != 0 and "failed precondition" in res.stderr
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    assert right not in blob_files(daemon) and wrong not in blob_files(daemon)
    assert _ls_digests(ctr) == {}


def test_content_active_during_slow_ingest(ctr: Ctr) -> None:
    proc = subprocess.Popen(
        [str(CTR), "-a", str(ctr.address), "content", "ingest", "slow"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(os.urandom(3 << 20))
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while True:  # wait for the state, bounded: the ingest shows up once data flows
            out = ctr("content", "active").stdout
            if "slow" in out:
                break
            assert time.monotonic() < deadline, out
        assert out.splitlines()[0].split()[:3] == ["REF", "SIZE", "AGE"]
        proc.stdin.write(b"end")
        proc.stdin.close()
        assert proc.wait(60) == 0
        assert "slow" not in ctr("content", "active").stdout
    finally:
        if proc.poll() is None:
            proc.kill()


def test_leases_create_ls_rm(ctr: Ctr) -> None:
    out = ctr("leases", "create", "--id", "mylease", "x=y").stdout.strip()
    assert out == "mylease"
    generated = ctr("leases", "create").stdout.strip()
    rows = ctr("leases", "ls").stdout.splitlines()
    assert rows[0].split() == ["ID", "CREATED", "AT", "LABELS"]
    ids = [r.split()[0] for r in rows[1:]]
    assert "mylease" in ids and generated in ids
    assert any("x=y" in r for r in rows if r.startswith("mylease"))
    assert "containerd.io/gc.expire=" in next(r for r in rows if r.startswith(generated))
    ctr("leases", "rm", "--sync", "mylease", generated)
    assert ctr("leases", "ls", "-q").stdout.split() == []
    res = ctr("leases", "rm", "nope", check=False)
    assert res.returncode != 0 and 'lease "nope": not found' in res.stderr


def _image_archives(tmp: Path) -> tuple[build.Image, Path, Path]:
    img = build.make_image(build.busybox_files())
    oci, docker = tmp / "oci.tar", tmp / "docker.tar"
    build.write_oci_archive(img, oci, "docker.io/library/bb:oci")
    build.write_docker_archive(img, docker, "bb:docker")
    return img, oci, docker


def test_images_import_ls_check_tag_label_rm(
    ctr: Ctr, daemon: harness.Daemon, tmp_path: Path
) -> None:
    img, oci, docker = _image_archives(tmp_path)
    ctr("images", "import", "--no-unpack", str(oci))
    ctr("images", "import", "--no-unpack", str(docker))
    names = ctr("images", "ls", "-q").stdout.split()
    assert "docker.io/library/bb:oci" in names
    assert "docker.io/library/bb:docker" in names
    check = ctr("images", "check").stdout
    assert check.count("complete (2/2)") == 2, check
    ctr("images", "tag", "docker.io/library/bb:oci", "docker.io/library/bb:tagged")
    ctr("images", "label", "docker.io/library/bb:tagged", "team=a")
    rows = ctr("images", "ls").stdout.splitlines()
    tagged = next(r for r in rows if r.startswith("docker.io/library/bb:tagged"))
    assert img.manifest_digest in tagged and "team=a" in tagged
    assert {img.manifest_digest, img.config_digest, img.layer.digest} <= blob_files(daemon)
    # the namespace holds images and blobs now
    res = ctr("namespaces", "rm", "default", check=False)
    assert 'namespace "default" must be empty, but it still has images, blobs' in res.stderr
    ctr("images", "rm", *names, "docker.io/library/bb:tagged")
    assert ctr("images", "ls", "-q").stdout.split() == []


def test_image_delete_sync_removes_the_gc_ref_chain(
    ctr: Ctr, daemon: harness.Daemon, tmp_path: Path
) -> None:
    img, oci, _ = _image_archives(tmp_path)
    ctr("images", "import", "--no-unpack", str(oci))
    labels = _ls_digests(ctr)
    # the manifest refers to its config and layer through gc.ref labels
    assert f"containerd.io/gc.ref.content.config={img.config_digest}" in labels[img.manifest_digest]
    blobs = {img.manifest_digest, img.config_digest, img.layer.digest}
    # survives a collection: reached from the image through the label chain
    lease = ctr("leases", "create").stdout.strip()
    ctr("leases", "rm", "--sync", lease)
    assert blobs <= blob_files(daemon)
    # pruning layer references lets the collector take the (not unpacked) layer only
    ctr("content", "prune", "references")
    assert blob_files(daemon) & blobs == {img.manifest_digest, img.config_digest}
    ctr("images", "rm", "--sync", "docker.io/library/bb:oci")
    assert blob_files(daemon) & blobs == set()
    assert _ls_digests(ctr) == {}


def test_blob_under_expired_lease_is_collected(
    channel: grpc.Channel, daemon: harness.Daemon
) -> None:
    leases = leases_pb2_grpc.LeasesStub(channel)
    leases.Create(
        leases_pb2.CreateRequest(
            id="short", labels={"containerd.io/gc.expire": "2000-01-01T00:00:00Z"}
        ),
        metadata=md(),
        timeout=10,
    )
    leases.Create(
        leases_pb2.CreateRequest(
            id="long", labels={"containerd.io/gc.expire": "2999-01-01T00:00:00Z"}
        ),
        metadata=md(),
        timeout=10,
    )
    doomed = write_blob(channel, b"doomed", ref="r1", lease="short")
    kept = write_blob(channel, b"kept", ref="r2", lease="long")
    res = leases.ListResources(
        leases_pb2.ListResourcesRequest(id="long"), metadata=md(), timeout=10
    )
    assert [(r.type, r.id) for r in res.resources] == [("content", kept)]
    assert {doomed, kept} <= blob_files(daemon)
    # deleting an unrelated lease with sync runs a collection and waits for it
    leases.Create(leases_pb2.CreateRequest(id="trigger"), metadata=md(), timeout=10)
    leases.Delete(leases_pb2.DeleteRequest(id="trigger", sync=True), metadata=md(), timeout=30)
    files = blob_files(daemon)
    assert doomed not in files and kept in files
    ids = [x.id for x in leases.List(leases_pb2.ListRequest(), metadata=md(), timeout=10).leases]
    assert ids == ["long"]


def test_sharing_policy(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    for policy, resent in (("shared", False), ("isolated", True)):
        base = tmp_path / policy
        base.mkdir()
        config = base / "config.toml"
        # No collection mid-test: these blobs are unreferenced, so GC may take them.
        config.write_text(
            TEST_CONFIG + '[plugins."io.containerd.metadata.v1.sqlite"]\n'
            f'content_sharing_policy = "{policy}"\n'
        )
        with (
            harness.pycontainerd(base, "--config", str(config)) as d,
            grpc.insecure_channel(f"unix://{d.address}") as ch,
        ):
            write_blob(ch, data, ref="a", ns="ns-a")
            stub = content_pb2_grpc.ContentStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.Info(content_pb2.InfoRequest(digest=dgst), metadata=md("ns-b"), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            first = next(
                stub.Write(
                    iter(
                        [
                            content_pb2.WriteContentRequest(
                                action=content_pb2.STAT, ref="b", total=len(data), expected=dgst
                            )
                        ]
                    ),
                    metadata=md("ns-b"),
                    timeout=10,
                )
            )
            if resent:
                assert first.offset == 0
                write_blob(ch, data, ref="b", ns="ns-b")
            else:
                # the writer learns the blob exists: everything is already "written"
                assert first.offset == len(data)
                # as Go's client does, the commit carries the offset the writer reported
                commit = content_pb2.WriteContentRequest(
                    action=content_pb2.COMMIT,
                    ref="b",
                    total=len(data),
                    offset=first.offset,
                    expected=dgst,
                )
                list(stub.Write(iter([commit]), metadata=md("ns-b"), timeout=10))
            got = stub.Info(content_pb2.InfoRequest(digest=dgst), metadata=md("ns-b"), timeout=10)
            assert got.info.size == len(data)


def test_crash_mid_ingest_then_resume(tmp_path: Path, big_blob: tuple[Path, str]) -> None:
    path, dgst = big_blob
    with harness.pycontainerd(tmp_path) as d:
        c = Ctr(d.address)
        proc = subprocess.Popen(
            [
                str(CTR),
                "-a",
                str(d.address),
                "content",
                "ingest",
                "--expected-digest",
                dgst,
                "crash-ref",
            ],
            stdin=subprocess.PIPE,
        )
        assert proc.stdin is not None
        with path.open("rb") as f:
            proc.stdin.write(f.read(100 << 20))
            proc.stdin.flush()
        deadline = time.monotonic() + 60
        while True:  # until the daemon has accepted a good part of it
            rows = [r.split() for r in c("content", "active").stdout.splitlines()[1:]]
            if rows and rows[0][0] == "crash-ref" and _size(rows[0][1]) >= 32 << 20:
                break
            assert time.monotonic() < deadline, rows
        d.kill()
        proc.kill()
        proc.wait()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    assert list((tmp_path / "root/io.containerd.content.v1.content/blobs").rglob("*")) in (
        [],
        [tmp_path / "root/io.containerd.content.v1.content/blobs/sha256"],
    )
    with harness.pycontainerd(tmp_path) as d:
        c = Ctr(d.address)
        before = [r.split() for r in c("content", "active").stdout.splitlines()[1:]]
        assert before and before[0][0] == "crash-ref" and _size(before[0][1]) > 0
        with path.open("rb") as f:
            subprocess.run(
                [
                    str(CTR),
                    "-a",
                    str(d.address),
                    "content",
                    "ingest",
                    "--expected-digest",
                    dgst,
                    "crash-ref",
                ],
                stdin=f,
                check=True,
                timeout=300,
            )
        assert dgst in _ls_digests(c)
        got = subprocess.run(
            [str(CTR), "-a", str(d.address), "content", "get", dgst],
            capture_output=True,
            check=True,
            timeout=300,
        ).stdout
        assert "sha256:" + hashlib.sha256(got).hexdigest() == dgst


def _size(text: str) -> float:
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (
            lambda s: s.Info(
                content_pb2.InfoRequest(digest="sha256:zz"), metadata=md(), timeout=10
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.Info(
                content_pb2.InfoRequest(digest="md5:" + "0" * 32), metadata=md(), timeout=10
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.Info(
                content_pb2.InfoRequest(digest="sha256:" + "0" * 64), metadata=md(), timeout=10
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda s: list(
                s.List(
                    content_pb2.ListContentRequest(filters=["labels.a=="]),
                    metadata=md(),
                    timeout=10,
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.ListStatuses(
                content_pb2.ListStatusesRequest(filters=["ref~="]), metadata=md(), timeout=10
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.Info(content_pb2.InfoRequest(digest="sha256:" + "0" * 64), timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ],
)
def test_bad_content_requests(channel: grpc.Channel, call, code) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(content_pb2_grpc.ContentStub(channel))
    assert info.value.code() == code
    assert info.value.details()


def test_bad_reads_and_updates(channel: grpc.Channel) -> None:
    stub = content_pb2_grpc.ContentStub(channel)
    dgst = write_blob(channel, b"0123456789", ref="x")
    chunks = list(
        stub.Read(
            content_pb2.ReadContentRequest(digest=dgst, offset=3, size=4), metadata=md(), timeout=10
        )
    )
    assert b"".join(c.data for c in chunks) == b"3456"
    for req, code in [
        (content_pb2.ReadContentRequest(digest=dgst, offset=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (content_pb2.ReadContentRequest(digest=dgst, offset=11), grpc.StatusCode.OUT_OF_RANGE),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Read(req, metadata=md(), timeout=10))
        assert info.value.code() == code
    upd = content_pb2.UpdateRequest(info=content_pb2.Info(digest=dgst))
    upd.update_mask.paths.append("size")
    with pytest.raises(grpc.RpcError) as info:
        stub.Update(upd, metadata=md(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'cannot update "size" field' in (info.value.details() or "")
    images = images_pb2_grpc.ImagesStub(channel)
    bad = images_pb2.CreateImageRequest(image=images_pb2.Image(name="x"))
    with pytest.raises(grpc.RpcError) as info:
        images.Create(bad, metadata=md(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    leases = leases_pb2_grpc.LeasesStub(channel)
    leases.Create(leases_pb2.CreateRequest(id="l"), metadata=md(), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        leases.AddResource(
            leases_pb2.AddResourceRequest(
                id="l", resource=leases_pb2.Resource(id="nope", type="content")
            ),
            metadata=md(),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _ = namespace_pb2
