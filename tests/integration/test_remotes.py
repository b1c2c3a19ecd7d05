"""Push and pull through Debian's docker-registry with the Python client.

Images are built with ``pycontainerd.images.build``, imported into a pycontainerd with
Go ``ctr``, pushed with ``client.push`` and pulled into a fresh daemon (or Debian's
containerd) with ``client.pull``. A TCP proxy cuts a layer download half-way to prove the
pull resumes; a blob corrupted in the registry's storage proves bad content is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from pycontainerd import harness
from pycontainerd.client.aio import AsyncClient
from pycontainerd.client.blocking import Client
from pycontainerd.client.types import Descriptor, DescriptorPlatform, Image
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.images import build
from pycontainerd.images import mediatypes as mt
from pycontainerd.remotes import pusher
from tests.integration.conftest import TEST_CONFIG, Ctr
from tests.integration.registry import REGISTRY, Registry, run_registry

# Incompressible, so the gzip layer is big enough for the proxy to cut mid-body.
BIG = 1_500_000


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


def make_image(seed: bytes) -> build.Image:
    big = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(BIG // 32))
    return build.make_image(
        [
            {"etc/": build.File(directory=True, mode=0o755), "etc/hello": build.File(b"hi\n")},
            {"data/big": build.File(big), "etc/seed": build.File(seed)},
        ]
    )


@contextlib.contextmanager
def fresh_daemon(base: Path) -> Iterator[harness.Daemon]:
    base.mkdir()
    config = base / "config.toml"
    config.write_text(TEST_CONFIG)
    with harness.pycontainerd(base, "--config", str(config)) as d:
        yield d


async def publish(
    daemon: harness.Daemon, ctr: Ctr, ref: str, img: build.Image, tmp_path: Path, **kw: object
) -> None:
    archive = tmp_path / f"{hashlib.sha256(ref.encode()).hexdigest()[:8]}.tar"
    build.write_oci_archive(img, archive, ref)
    ctr("images", "import", "--no-unpack", str(archive))
    async with AsyncClient(str(daemon.address)) as c:
        desc = await c.push(ref, **kw)  # type: ignore[arg-type]
    assert desc.digest == img.manifest_digest


async def test_push_then_pull_into_a_fresh_daemon(
    daemon: harness.Daemon,
    ctr: Ctr,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = f"{registry.host}/pc/app:v1"
    img = make_image(b"app")
    # Small limits so the big layer goes up in PATCH chunks, the rest in one PUT.
    monkeypatch.setattr(pusher, "MONOLITHIC_MAX", 100_000)
    monkeypatch.setattr(pusher, "CHUNK_SIZE", 512 * 1024)
    await publish(daemon, ctr, ref, img, tmp_path, plain_http=True)
    layer = img.layers[1]
    with fresh_daemon(tmp_path / "fresh") as fresh:
        events: list[tuple[str, str]] = []
        async with AsyncClient(str(fresh.address)) as c:
            image = await c.pull(
                ref, plain_http=True, progress=lambda r, s, o, t: events.append((r, s))
            )
            assert image.name == ref and image.target.digest == img.manifest_digest
            manifest = await c.content.info(img.manifest_digest)
            assert manifest.labels["containerd.io/gc.ref.content.config"] == img.config_digest
            assert manifest.labels["containerd.io/gc.ref.content.l.1"] == layer.digest
            assert manifest.labels[f"containerd.io/distribution.source.{registry.host}"] == "pc/app"
            info = await c.content.info(layer.digest)
            assert info.labels["containerd.io/uncompressed"] == layer.diff_id
            assert (f"layer-{layer.digest}", "done") in events
            snapshots = await c.snapshots().list()
            assert len(snapshots) == 2
            assert await c.content.list_statuses() == []
            # the lease is gone: nothing but the image holds the content
            assert await c.leases.list() == []

            # by digest: the image is named by the digest reference
            by_digest = f"{registry.host}/pc/app@{img.manifest_digest}"
            again = await c.pull(by_digest, plain_http=True, unpack=False)
            assert again.name == by_digest and again.target == image.target

            # to another repository on the same registry: the layers are cross-mounted
            pushed: list[tuple[str, str]] = []
            other = f"{registry.host}/pc/other:v2"
            await c.push(
                other, ref, plain_http=True, progress=lambda r, s, o, t: pushed.append((r, s))
            )
            assert (f"layer-{layer.digest}", "mounted") in pushed
            # and pushing it again skips every blob the registry has
            pushed.clear()
            await c.push(
                other, ref, plain_http=True, progress=lambda r, s, o, t: pushed.append((r, s))
            )
            assert (f"layer-{layer.digest}", "exists") in pushed
            assert (await c.pull(other, plain_http=True)).target == image.target


async def test_multi_platform_index(
    daemon: harness.Daemon, ctr: Ctr, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/pc/multi:v1"
    images = {
        arch: build.make_image({"arch": build.File(arch.encode())}, arch=arch)
        for arch in ("amd64", "arm64")
    }
    for arch, img in images.items():
        archive = tmp_path / f"{arch}.tar"
        build.write_oci_archive(img, archive, f"{registry.host}/pc/multi:{arch}")
        ctr("images", "import", "--no-unpack", str(archive))
    entries = [
        Descriptor(
            mt.OCI_MANIFEST,
            img.manifest_digest,
            len(img.manifest),
            platform=DescriptorPlatform("linux", arch),
        )
        for arch, img in images.items()
    ]
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    ).encode()
    async with AsyncClient(str(daemon.address)) as c:
        labels = {f"containerd.io/gc.ref.content.m.{i}": e.digest for i, e in enumerate(entries)}
        written = await c.content.write_blob("multi-index", index, labels=labels)
        root = Descriptor(mt.OCI_INDEX, written.digest, written.size)
        await c.images.create(Image(ref, root))
        await c.push(ref, plain_http=True)
    amd64, arm64 = images["amd64"], images["arm64"]
    with fresh_daemon(tmp_path / "fresh") as fresh:
        async with AsyncClient(str(fresh.address)) as c:
            image = await c.pull(ref, plain_http=True, platform="linux/amd64")
            assert image.target == root
            index_info = await c.content.info(root.digest)
            assert index_info.labels["containerd.io/gc.ref.content.m.0"] == amd64.manifest_digest
            await c.content.info(amd64.manifest_digest)
            with pytest.raises(NotFound):
                await c.content.info(arm64.manifest_digest)
            await c.pull(ref, plain_http=True, platform="linux/arm64", unpack=False)
            await c.content.info(arm64.config_digest)
            with pytest.raises(NotFound, match="platform"):
                await c.pull(ref, plain_http=True, platform="linux/s390x")
    with fresh_daemon(tmp_path / "all") as fresh:
        async with AsyncClient(str(fresh.address)) as c:
            await c.pull(ref, plain_http=True, all_platforms=True, unpack=False)
            for img in images.values():
                assert (await c.content.info(img.layers[0].digest)).size == len(img.layers[0].gz)


class CuttingProxy:
    """A TCP proxy to ``upstream`` that cuts one connection once it has sent ``limit``
    bytes back to the client."""

    def __init__(self, upstream: str, limit: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.limit = limit
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
                self.sockets += [client, server]
                threading.Thread(
                    target=self._pump, args=(client, server, False), daemon=True
                ).start()
                threading.Thread(
                    target=self._pump, args=(server, client, True), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if counted and not self.cut.is_set() and sent + len(data) > self.limit:
                    dst.sendall(data[: self.limit - sent])
                    self.cut.set()
                    break
                dst.sendall(data)
                sent += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


async def test_pull_resumes_after_a_dropped_connection(
    daemon: harness.Daemon, ctr: Ctr, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(b"drop")
    await publish(daemon, ctr, f"{registry.host}/pc/drop:v1", img, tmp_path, plain_http=True)
    proxy = CuttingProxy(registry.host, 600_000)
    try:
        with fresh_daemon(tmp_path / "fresh") as fresh:
            async with AsyncClient(str(fresh.address)) as c:
                image = await c.pull(f"{proxy.host}/pc/drop:v1", plain_http=True)
                assert proxy.cut.is_set()
                assert image.target.digest == img.manifest_digest
                data = await c.content.read_all(img.layers[1].digest)
                assert data == img.layers[1].gz
    finally:
        proxy.close()


async def test_corrupt_blob_is_refused_and_nothing_committed(
    daemon: harness.Daemon, ctr: Ctr, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(b"corrupt")
    ref = f"{registry.host}/pc/corrupt:v1"
    await publish(daemon, ctr, ref, img, tmp_path, plain_http=True)
    layer = img.layers[1]
    hex_ = layer.digest.split(":", 1)[1]
    blob = registry.log.parent / "data/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
    blob.write_bytes(os.urandom(len(layer.gz)))
    with fresh_daemon(tmp_path / "fresh") as fresh:
        async with AsyncClient(str(fresh.address)) as c:
            with pytest.raises(FailedPrecondition, match="digest mismatch"):
                await c.pull(ref, plain_http=True)
            with pytest.raises(NotFound):
                await c.content.info(layer.digest)
            assert await c.content.list_statuses() == []
            assert await c.images.list() == []
            with pytest.raises(InvalidArgument, match="must be lowercase"):
                await c.pull(f"{registry.host}/Pc/Bad:v1", plain_http=True)
            with pytest.raises(InvalidArgument, match="invalid tag"):
                await c.pull(f"{registry.host}/pc/x:", plain_http=True)
            with pytest.raises(NotFound):
                await c.pull(f"{registry.host}/pc/corrupt:missing", plain_http=True)


async def test_pull_into_debian_containerd(
    daemon: harness.Daemon, ctr: Ctr, reference: Ctr, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(b"reference")
    ref = f"{registry.host}/pc/ref:v1"
    await publish(daemon, ctr, ref, img, tmp_path, plain_http=True)
    async with AsyncClient(str(reference.address)) as c:
        image = await c.pull(ref, plain_http=True)
    assert image.target.digest == img.manifest_digest
    assert ref in reference("images", "ls", "-q").stdout.split()
    check = reference("images", "check").stdout
    assert "complete" in check
    assert len(reference("snapshots", "ls").stdout.splitlines()) == 3


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """A registry with TLS (our own CA) and htpasswd basic auth (user u, password pw)."""
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    base = tmp_path_factory.mktemp("tls-registry")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=pycontainerd test CA",
        cwd=base,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=base,
    )
    (base / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        cwd=base,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's libxcrypt makes bcrypt ($2b$), which the registry wants

        hashed = crypt.crypt("pw", crypt.mksalt(crypt.METHOD_BLOWFISH))
    (base / "htpasswd").write_text(f"u:{hashed}\n")
    (base / "reg").mkdir()
    with run_registry(
        base / "reg", tls=(base / "srv.crt", base / "srv.key"), htpasswd=base / "htpasswd"
    ) as r:
        yield r, base / "ca.crt"


async def test_tls_and_basic_auth(
    daemon: harness.Daemon, ctr: Ctr, tls_registry: tuple[Registry, Path], tmp_path: Path
) -> None:
    registry, ca = tls_registry
    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / registry.host).mkdir(parents=True)
    (hosts_dir / registry.host / "hosts.toml").write_text(
        f'server = "https://{registry.host}"\nca = "{ca}"\n'
    )
    img = make_image(b"tls")
    ref = f"{registry.host}/pc/secure:v1"
    await publish(daemon, ctr, ref, img, tmp_path, hosts_dir=hosts_dir, credentials="u:pw")
    with fresh_daemon(tmp_path / "fresh") as fresh:
        async with AsyncClient(str(fresh.address)) as c:
            with pytest.raises(FailedPrecondition, match="unauthorized"):
                await c.pull(ref, hosts_dir=hosts_dir)
            with pytest.raises(FailedPrecondition, match="unauthorized"):
                await c.pull(ref, hosts_dir=hosts_dir, credentials="u:wrong")
            with pytest.raises(FailedPrecondition, match="TLS certificate not trusted"):
                await c.pull(ref, credentials="u:pw")  # no CA: the certificate is unknown
            image = await c.pull(ref, hosts_dir=hosts_dir, credentials="u:pw")
            assert image.target.digest == img.manifest_digest


class TokenServer:
    """The distribution token spec's endpoint: checks basic credentials (u:pw) and
    issues JWTs (RS256, signed with openssl, the certificate in ``x5c``) that grant
    what the scope asks for. The registry trusts the certificate (``rootcertbundle``)."""

    def __init__(self, base: Path) -> None:
        self.key = base / "token.key"
        cert = base / "token.crt"
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(self.key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=token issuer",
            cwd=base,
        )
        self.cert = cert
        der = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.issued = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                expected = "Basic " + base64.b64encode(b"u:pw").decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlparse(self.path).query)
                body = server.token(query.get("service", [""])[0], query.get("scope", []))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, service: str, scopes: list[str]) -> bytes:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {
            "iss": "pycontainerd-tests",
            "sub": "u",
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        self.issued += 1
        return json.dumps(
            {"token": f"{signing_input}.{b64(signature)}", "expires_in": 300}
        ).encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_bearer_token_auth(daemon: harness.Daemon, ctr: Ctr, tmp_path: Path) -> None:
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    tokens = TokenServer(tmp_path)
    try:
        (tmp_path / "reg").mkdir()
        with run_registry(
            tmp_path / "reg",
            token=(tokens.realm, "pycontainerd-registry", "pycontainerd-tests", tokens.cert),
        ) as registry:
            img = make_image(b"bearer")
            ref = f"{registry.host}/pc/tok:v1"
            await publish(daemon, ctr, ref, img, tmp_path, plain_http=True, credentials="u:pw")
            # one token for push (pull,push), reused for every request of the push
            assert tokens.issued == 1
            with fresh_daemon(tmp_path / "fresh") as fresh:
                async with AsyncClient(str(fresh.address)) as c:
                    with pytest.raises(FailedPrecondition, match="refused the credentials"):
                        await c.pull(ref, plain_http=True, credentials="u:nope")
                    image = await c.pull(ref, plain_http=True, credentials="u:pw")
                    assert image.target.digest == img.manifest_digest
            assert tokens.issued == 2
    finally:
        tokens.close()


def test_blocking_client_push_and_pull(
    daemon: harness.Daemon, ctr: Ctr, registry: Registry, tmp_path: Path
) -> None:
    img = make_image(b"blocking")
    ref = f"{registry.host}/pc/blocking:v1"
    archive = tmp_path / "blocking.tar"
    build.write_oci_archive(img, archive, ref)
    ctr("images", "import", "--no-unpack", str(archive))
    with Client(str(daemon.address)) as c:
        assert c.push(ref, plain_http=True).digest == img.manifest_digest
        c.images.delete(ref, sync=True)
        with pytest.raises(NotFound):
            c.content.info(img.layers[1].digest)
        events: list[tuple[str, str, int, int]] = []
        image = c.pull(ref, plain_http=True, progress=lambda *e: events.append(e))
        assert image.target.digest == img.manifest_digest
    done = [e for e in events if e[1] == "done"]
    assert {e[0] for e in done} >= {f"layer-{layer.digest}" for layer in img.layers}
    assert all(offset == total for _, _, offset, total in done)
