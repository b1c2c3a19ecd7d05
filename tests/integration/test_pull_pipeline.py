"""Pull unpacks layer by layer as layers arrive, and a failed pull leaves nothing behind.

Images go straight into Debian's docker-registry over its HTTP API; the daemon pulls
them through ``HoldingProxy``, an HTTP proxy that logs every request and can hold back a
blob's GET until a threading.Event is set. The event is set by a watcher on the daemon's
``/snapshot/commit`` events, so "layer 1's snapshot is committed before layer 2's blob
is served" is arranged without sleeping: if the pull waited for every blob before
unpacking, the held GET would only go out when its hold timed out, and the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import http.server
import itertools
import json
import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from pycontainerd import harness
from pycontainerd.client import pull as pull_module
from pycontainerd.client.aio import AsyncClient
from pycontainerd.client.types import Image
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pycontainerd.images import build
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.unpack import chain_ids
from tests.integration.registry import REGISTRY, Registry, run_registry

from pycontainerd._api.containerd.events import snapshot_pb2  # isort: skip

# A held GET waits at most this long (less than the client's 30 s read timeout).
HOLD_TIMEOUT = 20.0
# An upper bound for one pull here; a hang fails the test instead of stalling it.
PULL_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip("Debian's docker-registry is not installed")
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


# -- putting images into the registry -------------------------------------------------------


def push_blob(registry: Registry, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=f"http://{registry.host}", timeout=30) as http_client:
        started = http_client.post(f"/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        # The location carries the upload's state in its query: add to it, not replace it.
        separator = "&" if "?" in location else "?"
        done = http_client.put(f"{location}{separator}digest={digest}", content=data)
        assert done.status_code == 201, done.text
    return digest


def push_manifest(registry: Registry, repo: str, ref: str, media_type: str, data: bytes) -> str:
    with httpx.Client(base_url=f"http://{registry.host}", timeout=30) as http_client:
        resp = http_client.put(
            f"/v2/{repo}/manifests/{ref}", content=data, headers={"Content-Type": media_type}
        )
        assert resp.status_code == 201, resp.text
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(registry: Registry, repo: str, tag: str, img: build.Image) -> None:
    for digest, data in img.blobs.items():
        if digest != img.manifest_digest:
            push_blob(registry, repo, data)
    push_manifest(registry, repo, tag, mt.OCI_MANIFEST, img.manifest)


def layered_image(seed: bytes, count: int) -> build.Image:
    """``count`` small layers, unique to ``seed`` (the registry shares blobs by digest)."""
    return build.make_image(
        [{f"layer{i}": build.File(seed + b"-%d" % i)} for i in range(count)],
        cmd=("/layer0",),
    )


def with_config(img: build.Image, config: dict[str, Any]) -> build.Image:
    """``img`` with its config replaced (and the manifest pointing at the new one)."""
    raw = json.dumps(config, sort_keys=True).encode()
    manifest = json.loads(img.manifest)
    manifest["config"]["digest"] = "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest["config"]["size"] = len(raw)
    out = build.Image(img.layers, raw, json.dumps(manifest, sort_keys=True).encode())
    out.blobs = {layer.digest: layer.gz for layer in img.layers}
    out.blobs[out.config_digest] = raw
    out.blobs[out.manifest_digest] = out.manifest
    return out


def index_of(*entries: dict[str, Any]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": list(entries)}
    ).encode()


# -- the proxy and the commit watcher -------------------------------------------------------


class HoldingProxy:
    """An HTTP proxy to the registry that logs ``"<method> <path>"`` of every request and
    holds the GET of a blob named in ``holds`` until its event is set (or HOLD_TIMEOUT).
    ``released[digest]`` says whether the event, not the timeout, let it through."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[str] = []
        self.holds: dict[str, threading.Event] = {}
        self.released: dict[str, bool] = {}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self, "GET")

            def do_HEAD(self) -> None:
                proxy.forward(self, "HEAD")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        # A client that gave up (a failed pull cancels its other downloads) is no error.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._forward(handler, method)

    def _forward(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        self.requests.append(f"{method} {handler.path}")
        for digest, event in self.holds.items():
            if method == "GET" and handler.path.endswith(f"/blobs/{digest}"):
                self.released[digest] = event.wait(HOLD_TIMEOUT)
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            skip = {"host", "connection"}
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in skip}
            upstream.request(method, handler.path, headers=headers)
            resp = upstream.getresponse()
            handler.send_response(resp.status)
            for key, value in resp.getheaders():
                # The body is relayed de-chunked and the connection closed after it.
                if key.lower() not in ("connection", "transfer-encoding"):
                    handler.send_header(key, value)
            handler.send_header("Connection", "close")
            handler.end_headers()
            if method != "HEAD":
                while chunk := resp.read(65536):
                    handler.wfile.write(chunk)
        finally:
            upstream.close()

    def close(self) -> None:
        for event in self.holds.values():
            event.set()  # let a held request go before shutting down
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[HoldingProxy]:
    p = HoldingProxy(registry.host)
    try:
        yield p
    finally:
        p.close()


class CommitWatch:
    """The names of snapshots committed in the daemon, in order, from its events;
    ``committed(name)`` is a threading.Event set when ``name`` is committed."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.events: dict[str, threading.Event] = {}
        self.marker = f"pipeline-sync-{secrets.token_hex(4)}"
        self.live = asyncio.Event()

    def committed(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    async def run(self, client: AsyncClient) -> None:
        async for env in client.events():
            event = env.event
            if env.topic == "/namespaces/create" and str(getattr(event, "name", "")).startswith(
                self.marker
            ):
                self.live.set()
            elif env.topic == "/snapshot/commit":
                if not isinstance(event, snapshot_pb2.SnapshotCommit):
                    event = snapshot_pb2.SnapshotCommit.FromString(event.value)
                self.order.append(event.name)
                self.committed(event.name).set()


@contextlib.asynccontextmanager
async def watching_commits(client: AsyncClient) -> AsyncIterator[CommitWatch]:
    """A CommitWatch whose subscription is live: it has seen an event made after it
    started. The subscription registers at some point after the task starts, so marker
    namespaces are created until one of them is seen."""
    watch = CommitWatch()
    task = asyncio.create_task(watch.run(client))
    try:
        async with asyncio.timeout(30):
            for attempt in itertools.count():
                await client.create_namespace(f"{watch.marker}-{attempt}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.live.wait(), 1)
                    break
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def assert_nothing_left(c: AsyncClient, *, ingests: bool = True) -> None:
    """A failed pull left no image, lease, snapshot (active or committed) or, with
    ``ingests``, ingest."""
    assert await c.images.list() == []
    assert await c.leases.list() == []
    assert await c.snapshots().list() == []
    if ingests:
        assert await c.content.list_statuses() == []


async def pull(c: AsyncClient, proxy: HoldingProxy, ref: str, **options: Any) -> Image:
    """``ref`` (repository:tag) pulled through the proxy, bounded by PULL_TIMEOUT."""
    pulling = c.pull(f"{proxy.host}/{ref}", plain_http=True, **options)
    return await asyncio.wait_for(pulling, PULL_TIMEOUT)


# -- the tests ------------------------------------------------------------------------------


async def test_layers_unpack_while_later_layers_download(
    daemon: harness.Daemon, registry: Registry, proxy: HoldingProxy
) -> None:
    img = layered_image(b"pipeline", 3)
    push_image(registry, "pc/pipeline", "v1", img)
    chain = chain_ids([layer.diff_id for layer in img.layers])
    last = img.layers[2]
    async with AsyncClient(str(daemon.address)) as c, watching_commits(c) as watch:
        # Layer 3's blob is served only once layers 1 and 2 are unpacked and committed.
        proxy.holds[last.digest] = watch.committed(chain[1])
        image = await pull(c, proxy, "pc/pipeline:v1")
        assert proxy.released == {last.digest: True}, "layer 3 was held until its hold timed out"
        assert image.name == f"{proxy.host}/pc/pipeline:v1"
        assert image.target.digest == img.manifest_digest
        assert watch.order == chain  # each layer committed in order, under its chain ID
        sn = c.snapshots()
        assert (await sn.stat(chain[2])).parent == chain[1]
        assert (await sn.stat(chain[1])).parent == chain[0]
        assert sorted(s.name for s in await sn.list()) == sorted(chain)
        config = await c.content.info(img.config_digest)
        assert config.labels["containerd.io/gc.ref.snapshot.overlayfs"] == chain[2]
        for layer in img.layers:
            info = await c.content.info(layer.digest)
            assert info.labels["containerd.io/uncompressed"] == layer.diff_id
        assert await c.leases.list() == []
        assert await c.content.list_statuses() == []


async def test_corrupt_layer_removes_what_the_pull_made(
    daemon: harness.Daemon, registry: Registry, proxy: HoldingProxy
) -> None:
    img = layered_image(b"corrupt-pipeline", 2)
    push_image(registry, "pc/corrupt-pipeline", "v1", img)
    bad = img.layers[1]
    hex_ = bad.digest.split(":", 1)[1]
    blob = registry.log.parent / "data/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
    blob.write_bytes(os.urandom(len(bad.gz)))
    chain = chain_ids([layer.diff_id for layer in img.layers])
    async with AsyncClient(str(daemon.address)) as c, watching_commits(c) as watch:
        # The corrupt blob arrives only after layer 1 is unpacked: there is a committed
        # snapshot for the failure to clean up.
        proxy.holds[bad.digest] = watch.committed(chain[0])
        with pytest.raises(FailedPrecondition, match="digest mismatch"):
            await pull(c, proxy, "pc/corrupt-pipeline:v1")
        assert proxy.released == {bad.digest: True}
        assert watch.order == [chain[0]]
        await assert_nothing_left(c)
        with pytest.raises(NotFound):
            await c.content.info(bad.digest)


async def test_cancelled_pull_removes_what_it_made(
    daemon: harness.Daemon, registry: Registry, proxy: HoldingProxy
) -> None:
    img = layered_image(b"cancelled", 2)
    push_image(registry, "pc/cancelled", "v1", img)
    chain = chain_ids([layer.diff_id for layer in img.layers])
    never = threading.Event()  # layer 2 stays held until the proxy closes
    proxy.holds[img.layers[1].digest] = never
    async with AsyncClient(str(daemon.address)) as c, watching_commits(c) as watch:
        pulling = asyncio.create_task(c.pull(f"{proxy.host}/pc/cancelled:v1", plain_http=True))
        first = watch.committed(chain[0])
        assert await asyncio.to_thread(first.wait, PULL_TIMEOUT), "layer 1 was never unpacked"
        pulling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pulling
        # (the held layer's ingest may stay: a later pull resumes it)
        await assert_nothing_left(c, ingests=False)


async def test_wrong_diff_id_removes_the_failed_apply(
    daemon: harness.Daemon, registry: Registry, proxy: HoldingProxy
) -> None:
    img = layered_image(b"diff-id", 2)
    config = json.loads(img.config)
    wrong = "sha256:" + hashlib.sha256(b"not the layer").hexdigest()
    config["rootfs"]["diff_ids"][1] = wrong
    img = with_config(img, config)
    push_image(registry, "pc/diff-id", "v1", img)
    async with AsyncClient(str(daemon.address)) as c:
        with pytest.raises(FailedPrecondition, match="wrong diff id"):
            await pull(c, proxy, "pc/diff-id:v1")
        # The extraction snapshot of layer 2 and the committed layer 1 are both gone.
        await assert_nothing_left(c)


async def test_unknown_media_type_in_an_index_is_refused_unfetched(
    daemon: harness.Daemon, registry: Registry, proxy: HoldingProxy
) -> None:
    good = layered_image(b"index-good", 1)
    other = layered_image(b"index-other", 1)
    push_image(registry, "pc/garbage", "good", good)
    push_image(registry, "pc/garbage", "other", other)
    amd64 = {"os": "linux", "architecture": "amd64"}
    index = index_of(
        {
            "mediaType": "application/x-garbage",
            "digest": other.manifest_digest,
            "size": len(other.manifest),
            "platform": amd64,
        },
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": good.manifest_digest,
            "size": len(good.manifest),
            "platform": amd64,
        },
    )
    push_manifest(registry, "pc/garbage", "v1", mt.OCI_INDEX, index)
    async with AsyncClient(str(daemon.address)) as c:
        with pytest.raises(
            NotFound,
            match=f"unexpected media type application/x-garbage for {other.manifest_digest}",
        ):
            await pull(c, proxy, "pc/garbage:v1", platform="linux/amd64")
        assert not [r for r in proxy.requests if other.manifest_digest in r]
        await assert_nothing_left(c)
        with pytest.raises(NotFound):
            await c.content.info(other.manifest_digest)


async def test_index_nested_too_deep_leaves_no_lease_or_image(
    daemon: harness.Daemon, registry: Registry, proxy: HoldingProxy
) -> None:
    leaf = layered_image(b"deep", 1)
    push_image(registry, "pc/deep", "leaf", leaf)
    child = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": leaf.manifest_digest,
        "size": len(leaf.manifest),
    }
    # The root is depth 0, so the leaf manifest ends up one level past the limit.
    for level in range(pull_module.MAX_INDEX_DEPTH + 1):
        body = index_of(child)
        digest = push_manifest(registry, "pc/deep", f"level{level}", mt.OCI_INDEX, body)
        child = {"mediaType": mt.OCI_INDEX, "digest": digest, "size": len(body)}
    async with AsyncClient(str(daemon.address)) as c:
        with pytest.raises(InvalidArgument, match="nests deeper than 8"):
            await pull(c, proxy, f"pc/deep:level{pull_module.MAX_INDEX_DEPTH}")
        assert not [r for r in proxy.requests if leaf.manifest_digest in r]
        await assert_nothing_left(c)
