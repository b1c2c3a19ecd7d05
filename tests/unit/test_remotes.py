"""The registry client without a network: references, challenges, hosts.toml,
credentials, and resolve/fetch/push against an in-process registry (httpx transport)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, NotFound, NotImplemented_
from pycontainerd.images import mediatypes as mt
from pycontainerd.remotes import fetcher, pusher, resolver
from pycontainerd.remotes.auth import (
    Challenge,
    Credentials,
    TokenCache,
    credentials_from_docker_config,
    parse_challenges,
    token_from_response,
)
from pycontainerd.remotes.hosts import RegistryHost, load_hosts, parse_hosts_toml
from pycontainerd.remotes.reference import Reference, parse_reference

SHA = "sha256:" + "a" * 64

# -- references ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000/a/b/c:v1"),
        ("ghcr.io/org/repo_x.y-z:1.0_rc", "ghcr.io/org/repo_x.y-z:1.0_rc"),
        (f"busybox@{SHA}", f"docker.io/library/busybox@{SHA}"),
        (f"busybox:1@{SHA}", f"docker.io/library/busybox:1@{SHA}"),
        (f"reg.example.com:443/a@{SHA}", f"reg.example.com:443/a@{SHA}"),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        ("a__b/c", "docker.io/a__b/c:latest"),
    ],
)
def test_reference_normalisation(ref: str, expected: str) -> None:
    assert str(parse_reference(ref)) == expected


def test_reference_parts() -> None:
    r = parse_reference(f"localhost:5000/x/y:t@{SHA}")
    assert r == Reference("localhost:5000", "x/y", "t", SHA)
    assert r.name == "localhost:5000/x/y" and r.object == SHA
    assert parse_reference("x").object == "latest"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/x", "must be lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "a" * 129, "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "A" * 64, "invalid sha256 digest"),
        ("busybox@" + "a" * 64, "invalid digest"),
        ("a//b", "invalid repository"),
        ("a/b/", "invalid repository"),
        ("-a.com/b", "invalid domain"),
        ("a_/b", "invalid repository"),
        ("a..b/c", "invalid domain"),
        ("x/" + "a" * 260, "longer than 255"),
        ("a b", "invalid repository"),
    ],
)
def test_malformed_references_are_rejected(ref: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_reference(ref)


# -- challenges and credentials ------------------------------------------------------


def test_bearer_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]


def test_several_challenges_quotes_and_case() -> None:
    header = r'Basic realm="Registry \"Realm\", one", Bearer REALM=https://t/x , service=s'
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": 'Registry "Realm", one'}),
        Challenge("bearer", {"realm": "https://t/x", "service": "s"}),
    ]
    assert parse_challenges("") == []
    assert parse_challenges("Negotiate") == [Challenge("negotiate", {})]
    with pytest.raises(InvalidArgument, match="unterminated"):
        parse_challenges('Basic realm="x')


def test_credentials_from_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = base64.b64encode(b"alice:pa:ss").decode()
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
            "reg.example.com:5000": {"auth": auth},
            "https://other.example.com/v2/": {"username": "bob", "password": "pw2"},
        }
    }
    assert credentials_from_docker_config("reg.example.com:5000", config) == Credentials(
        "alice", "pa:ss"
    )
    assert credentials_from_docker_config("docker.io", config) == Credentials("hub", "pw")
    assert credentials_from_docker_config("other.example.com", config) == Credentials("bob", "pw2")
    assert credentials_from_docker_config("nowhere", config) is None
    with pytest.raises(InvalidArgument, match="not base64"):
        credentials_from_docker_config("x", {"auths": {"x": {"auth": "!!!"}}})
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert credentials_from_docker_config("reg.example.com:5000") == Credentials("alice", "pa:ss")
    assert Credentials.parse("u:p:q") == Credentials("u", "p:q")
    with pytest.raises(InvalidArgument):
        Credentials.parse("nopassword")


def test_token_cache_and_token_response() -> None:
    cache = TokenCache()
    key = ("realm", "svc", "repository:a:pull")
    assert cache.get(key) is None
    cache.put(key, "tok", 300)
    assert cache.get(key) == "tok"
    cache.invalidate(key)
    assert cache.get(key) is None
    assert token_from_response({"token": "t", "expires_in": 120}) == ("t", 120.0)
    assert token_from_response({"access_token": "a"}) == ("a", 60.0)
    with pytest.raises(InvalidArgument):
        token_from_response({})


# -- hosts.toml ------------------------------------------------------------------------


def test_hosts_toml_mirrors_then_server(tmp_path: Path) -> None:
    text = """
server = "https://registry.example.com"
ca = "root.pem"

[host."http://mirror.local:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."http://mirror.local:5000".header]
    x-test = "1"

[host."https://m2.local/custom/path"]
  override_path = true
  client = [["c.crt", "c.key"], "/abs/d.pem"]
  ca = ["/a.pem", "b.pem"]
"""
    hosts = parse_hosts_toml(text, "registry.example.com", base=tmp_path)
    assert [h.base_url for h in hosts] == [
        "http://mirror.local:5000/v2",
        "https://m2.local/custom/path",
        "https://registry.example.com/v2",
    ]
    mirror, m2, server = hosts
    assert mirror.capabilities == {"pull", "resolve"} and not mirror.can("push")
    assert mirror.skip_verify and mirror.headers == {"x-test": "1"}
    assert m2.client_certs == (
        (str(tmp_path / "c.crt"), str(tmp_path / "c.key")),
        ("/abs/d.pem", ""),
    )
    assert m2.ca == ("/a.pem", str(tmp_path / "b.pem"))
    assert server.ca == (str(tmp_path / "root.pem"),) and server.can("push")


def test_hosts_defaults_and_errors(tmp_path: Path) -> None:
    assert load_hosts("docker.io") == [RegistryHost("https", "registry-1.docker.io")]
    assert load_hosts("r:5000", plain_http=True) == [RegistryHost("http", "r:5000")]
    d = tmp_path / "r:5000"
    d.mkdir()
    (d / "hosts.toml").write_text('[host."http://m:1"]\ncapabilities = ["pull"]\n')
    assert [h.base_url for h in load_hosts("r:5000", tmp_path)] == [
        "http://m:1/v2",
        "https://r:5000/v2",
    ]
    for bad, message in [
        ("server = 1", "server must be a URL"),
        ('server = "ftp://x"', "http:// or https://"),
        ('[host."http://m"]\ncapabilities = ["fly"]', "capabilities"),
        ('[host."http://m"]\nbogus = 1', "unknown keys"),
        ("not toml [", "hosts.toml"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            parse_hosts_toml(bad, "r")


# -- an in-process registry ------------------------------------------------------------


class FakeRegistry:
    """Enough of the distribution API for the client, with knobs to misbehave."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # tag or digest -> (type, body)
        self.requests: list[httpx.Request] = []
        self.head_fails = False
        self.drop_after: int | None = None  # cut the first blob body after N bytes
        self.failures = 0  # answer 503 this many times first
        self.auth: str | None = None  # "basic" or "bearer"
        self.uploads: dict[str, bytearray] = {}
        self.tokens_issued = 0
        self.valid_token = "tok-1"

    def add_manifest(self, tag: str, media_type: str, body: bytes) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[tag] = self.manifests[digest] = (media_type, body)
        return Descriptor(media_type, digest, len(body))

    def add_blob(self, data: bytes) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return Descriptor(mt.OCI_LAYER_GZIP, digest, len(data))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _authorized(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("authorization", "")
        if self.auth == "basic" and header != Credentials("u", "p").basic_header():
            return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})
        if self.auth == "bearer" and header != f"Bearer {self.valid_token}":
            return httpx.Response(
                401,
                headers={
                    "www-authenticate": 'Bearer realm="https://auth.test/token",service="reg"'
                },
            )
        return None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = request.url
        if url.host == "auth.test":
            if request.headers.get("authorization") != Credentials("u", "p").basic_header():
                return httpx.Response(401)
            self.tokens_issued += 1
            assert url.params["service"] == "reg" and url.params["scope"].startswith("repository:")
            return httpx.Response(200, json={"token": self.valid_token, "expires_in": 300})
        if self.failures:
            self.failures -= 1
            return httpx.Response(503)
        denied = self._authorized(request)
        if denied is not None:
            return denied
        path = url.path
        _, _, rest = path.partition("/v2/repo/")
        if rest.startswith("manifests/"):
            key = rest.removeprefix("manifests/")
            if request.method == "PUT":
                self.manifests[key] = (request.headers["content-type"], request.content)
                return httpx.Response(201)
            if key not in self.manifests:
                return httpx.Response(404)
            media_type, body = self.manifests[key]
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            headers = {"content-type": media_type, "docker-content-digest": digest}
            if request.method == "HEAD":
                if self.head_fails:
                    return httpx.Response(405)
                headers["content-length"] = str(len(body))
                return httpx.Response(200, headers=headers)
            return httpx.Response(200, headers=headers, stream=_Body(body))
        if rest.startswith("blobs/uploads/"):
            return self._upload(request, rest.removeprefix("blobs/uploads/"))
        if rest.startswith("blobs/"):
            digest = rest.removeprefix("blobs/")
            if digest not in self.blobs:
                return httpx.Response(404)
            data = self.blobs[digest]
            if request.method == "HEAD":
                return httpx.Response(200, headers={"content-length": str(len(data))})
            start = 0
            if "range" in request.headers:
                start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
            body = data[start:]
            if self.drop_after is not None:
                cut, self.drop_after = self.drop_after, None
                return httpx.Response(200, stream=_Dropping(body[:cut]))
            return httpx.Response(206 if start else 200, stream=_Body(body))
        return httpx.Response(404)

    def _upload(self, request: httpx.Request, upload: str) -> httpx.Response:
        if request.method == "POST":
            if "mount" in request.url.params:
                digest = request.url.params["mount"]
                if digest in self.blobs and request.url.params["from"] == "other":
                    return httpx.Response(201)
            uid = f"u{len(self.uploads)}"
            self.uploads[uid] = bytearray()
            return httpx.Response(202, headers={"location": f"/v2/repo/blobs/uploads/{uid}"})
        uid = upload.split("?")[0]
        self.uploads[uid] += request.content
        if request.method == "PATCH":
            return httpx.Response(202, headers={"location": f"/v2/repo/blobs/uploads/{uid}"})
        data = bytes(self.uploads[uid])
        digest = request.url.params["digest"]
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return httpx.Response(201)


class _Body(httpx.AsyncByteStream):
    """A body streamed as a socket's would be (``content=`` is pre-read by httpx)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 4096):
            yield self.data[i : i + 4096]


class _Dropping(httpx.AsyncByteStream):
    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx.ReadError("connection reset by test")


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver, "BACKOFF_START", 0.0)


def session(
    reg: FakeRegistry, ref: str = "reg.test/repo:v1", **kwargs: object
) -> resolver.RegistrySession:
    return resolver.RegistrySession(
        parse_reference(ref),
        transport=reg.transport(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_resolve_by_tag_and_digest(registry: FakeRegistry) -> None:
    desc = registry.add_manifest("v1", mt.OCI_MANIFEST, b'{"schemaVersion":2}')
    async with session(registry) as s:
        assert await s.resolve() == desc
    async with session(registry, f"reg.test/repo@{desc.digest}") as s:
        assert await s.resolve() == desc
    accept = registry.requests[0].headers["accept"]
    assert mt.OCI_INDEX in accept and mt.DOCKER_MANIFEST in accept
    async with session(registry, "reg.test/repo:nope") as s:
        with pytest.raises(NotFound):
            await s.resolve()


async def test_resolve_falls_back_to_get(registry: FakeRegistry) -> None:
    desc = registry.add_manifest("v1", mt.DOCKER_MANIFEST_LIST, b'{"manifests":[]}')
    registry.head_fails = True
    async with session(registry) as s:
        assert await s.resolve() == desc
    assert [r.method for r in registry.requests][-1] == "GET"


async def test_resolve_rejects_schema1_and_oversized(registry: FakeRegistry) -> None:
    registry.add_manifest("old", resolver.DOCKER_SCHEMA1, b"{}")
    async with session(registry, "reg.test/repo:old") as s:
        with pytest.raises(NotImplemented_, match="schema 1"):
            await s.resolve()
    registry.add_manifest("big", mt.OCI_MANIFEST, b" " * (resolver.MAX_MANIFEST_SIZE + 1))
    async with session(registry, "reg.test/repo:big") as s:
        with pytest.raises(InvalidArgument, match="4 MiB"):
            await s.resolve()
    registry.head_fails = True
    async with session(registry, "reg.test/repo:big") as s:
        with pytest.raises(InvalidArgument, match="4 MiB"):
            await s.resolve()


async def test_fetch_verifies_digest(registry: FakeRegistry) -> None:
    desc = registry.add_blob(b"x" * 1000)
    async with session(registry) as s:
        assert await fetcher.fetch_bytes(s, desc) == b"x" * 1000
        registry.blobs[desc.digest] = b"y" * 1000
        got: list[bytes] = []
        with pytest.raises(FailedPrecondition, match="digest mismatch"):
            async for chunk in fetcher.fetch(s, desc):
                got.append(chunk)
        # The last chunk is withheld, so a writer never gets all of a bad blob.
        assert sum(map(len, got)) < desc.size
        big = Descriptor(mt.OCI_MANIFEST, SHA, (4 << 20) + 1)
        with pytest.raises(InvalidArgument, match="4 MiB"):
            await fetcher.fetch_bytes(s, big)


async def test_fetch_resumes_after_a_drop(registry: FakeRegistry) -> None:
    data = bytes(range(256)) * 100
    desc = registry.add_blob(data)
    registry.drop_after = 5000
    async with session(registry) as s:
        assert await fetcher.fetch_bytes(s, desc) == data
    ranges = [r.headers.get("range") for r in registry.requests if r.method == "GET"]
    assert ranges == [None, "bytes=5000-"]
    # Starting past 0 (a resumed ingest) asks for the rest only.
    async with session(registry) as s:
        rest = b"".join([c async for c in fetcher.fetch(s, desc, 25000)])
    assert rest == data[25000:]


async def test_retries_on_503(registry: FakeRegistry) -> None:
    desc = registry.add_blob(b"z")
    registry.failures = 2
    async with session(registry) as s:
        assert await fetcher.fetch_bytes(s, desc) == b"z"
    registry.failures = 50
    async with session(registry) as s:
        with pytest.raises(Exception, match="503"):
            await fetcher.fetch_bytes(s, desc)


async def test_basic_auth(registry: FakeRegistry) -> None:
    registry.auth = "basic"
    desc = registry.add_blob(b"secret")
    async with session(registry) as s:
        with pytest.raises(FailedPrecondition, match="unauthorized"):
            await fetcher.fetch_bytes(s, desc)
    async with session(registry, credentials="u:p") as s:
        assert await fetcher.fetch_bytes(s, desc) == b"secret"
        assert await fetcher.fetch_bytes(s, desc) == b"secret"
    # The second fetch sent credentials up front: one 401 in all.
    statuses = [r.headers.get("authorization") for r in registry.requests]
    assert statuses.count(None) == 2


async def test_bearer_token_cached_and_refreshed(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    desc = registry.add_blob(b"tok")
    async with session(registry, credentials="u:p") as s:
        assert await fetcher.fetch_bytes(s, desc) == b"tok"
        assert await fetcher.fetch_bytes(s, desc) == b"tok"
        assert registry.tokens_issued == 1
        registry.valid_token = "tok-2"  # the old one is revoked: refresh on 401
        registry.tokens_issued = 0
        assert await fetcher.fetch_bytes(s, desc) == b"tok"
        assert registry.tokens_issued == 1
    token_request = next(r for r in registry.requests if r.url.host == "auth.test")
    assert token_request.url.params["scope"] == "repository:repo:pull"
    async with session(registry, credentials="u:wrong") as s:
        with pytest.raises(FailedPrecondition, match="refused the credentials"):
            await fetcher.fetch_bytes(s, desc)


def _reader(data: bytes, step: int = 1 << 20) -> Callable[[], AsyncIterator[bytes]]:
    async def read() -> AsyncIterator[bytes]:
        for i in range(0, len(data), step):
            yield data[i : i + step]

    return read


async def test_push_blobs_and_manifest(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = b"small" * 10
    big = bytes(range(256)) * 5000
    monkeypatch.setattr(pusher, "MONOLITHIC_MAX", 100_000)
    monkeypatch.setattr(pusher, "CHUNK_SIZE", 300_000)
    d_small = Descriptor(
        mt.OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(small).hexdigest(), len(small)
    )
    d_big = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(big).hexdigest(), len(big))
    async with session(registry) as s:
        assert await pusher.push_blob(s, d_small, _reader(small)) == "uploaded"
        assert await pusher.push_blob(s, d_small, _reader(small)) == "exists"
        assert await pusher.push_blob(s, d_big, _reader(big)) == "uploaded"
        manifest = b'{"schemaVersion":2}'
        m = Descriptor(mt.OCI_MANIFEST, "sha256:" + hashlib.sha256(manifest).hexdigest(), 19)
        await pusher.push_manifest(s, m, manifest, "v1")
    assert registry.blobs[d_small.digest] == small and registry.blobs[d_big.digest] == big
    patches = [r for r in registry.requests if r.method == "PATCH"]
    assert [r.headers["content-range"] for r in patches] == [
        "0-299999",
        "300000-599999",
        "600000-899999",
        "900000-1199999",
        "1200000-1279999",
    ]
    assert registry.manifests["v1"] == (mt.OCI_MANIFEST, manifest)


async def test_push_cross_mounts_from_the_source_repository(registry: FakeRegistry) -> None:
    data = b"shared layer"
    desc = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    labels = {"containerd.io/distribution.source.reg.test": "elsewhere,other"}
    async with session(registry) as s:
        # The registry declines the mount (it lacks the blob): the blob is uploaded.
        assert await pusher.push_blob(s, desc, _reader(data), labels) == "uploaded"
    post = next(r for r in registry.requests if r.method == "POST")
    assert post.url.params["mount"] == desc.digest and post.url.params["from"] == "elsewhere"

    # A blob only in "other": HEAD in "repo" misses, and the mount from "other" succeeds.
    only_in_other = FakeRegistry()
    only_in_other.blobs[desc.digest] = data
    original = only_in_other.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" and "/blobs/" in request.url.path:
            return httpx.Response(404)
        if request.method == "POST" and request.url.params.get("from") == "elsewhere":
            return httpx.Response(202, headers={"location": "/v2/repo/blobs/uploads/x"})
        return original(request)

    only_in_other.handle = handle  # type: ignore[method-assign]
    labels = {"containerd.io/distribution.source.reg.test": "other"}
    async with session(only_in_other) as s:
        assert await pusher.push_blob(s, desc, _reader(b""), labels) == "mounted"
        # A source label naming this very repository is no reason to mount.
        assert (
            pusher.mount_source(s, {"containerd.io/distribution.source.reg.test": "repo"}) is None
        )


async def test_pull_refuses_an_index_nested_too_deep(registry: FakeRegistry) -> None:
    """Nine nested indexes below the root: refused before anything reaches the store."""
    from pycontainerd.client import pull as pull_module

    child = registry.add_manifest("leaf", mt.OCI_INDEX, b'{"schemaVersion":2,"manifests":[]}')
    for level in range(pull_module.MAX_INDEX_DEPTH + 1):
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [child.to_json()]}
        ).encode()
        child = registry.add_manifest(f"level{level}", mt.OCI_INDEX, body)
    # A client that is never touched: the depth check runs before any content write.
    untouched: object = object()
    async with session(registry) as s:
        puller = pull_module._Puller(untouched, s, None, None)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="nests deeper than 8"):
            await puller.handle(child)
    fetched = [r.url.path for r in registry.requests]
    assert len(fetched) == pull_module.MAX_INDEX_DEPTH + 1  # the too-deep one is never fetched
