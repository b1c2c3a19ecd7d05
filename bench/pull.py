"""Cold pull of the large benchmark image from a local registry: ``pyctr`` vs Go ``ctr``.

Debian's ``docker-registry`` serves on a free loopback port from a temporary directory.
The 1 GB image of bench/image.py (five gzip layers) is uploaded into it once, straight
from the cached OCI layout tarball over the distribution API, so neither daemon ever
holds its blobs before the first round.

Each round is a cold pull into the namespace ``bench-pull``. Before it, outside the timed
part, the image is removed with ``images rm --sync`` (the garbage collector then takes
its content and snapshots), and the round is refused unless none of the image's blobs
is left on disk in the daemon's content store (a blob present in any namespace would
be shared rather than fetched), no ingest is active, and none of its chain IDs is a
snapshot. The timed part is only the pull command, which fetches and unpacks into
overlayfs: ``pyctr images pull --plain-http`` against pycontainerd, ``ctr images pull
--plain-http`` against containerd. After it, again untimed, the image record, every
blob and the whole committed snapshot chain must exist, so a pull that skipped work
cannot report a good time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import image
from pycontainerd.images.unpack import chain_ids
from tests.integration.registry import Registry, run_registry

if TYPE_CHECKING:
    from bench.run import Target

CTR = shutil.which("ctr") or "ctr"
PYCTR = str(Path(sys.executable).with_name("pyctr"))
NAMESPACE = "bench-pull"
REPOSITORY = "pycontainerd/bench-pull"
TAG = "latest"
SNAPSHOTTER = "overlayfs"
CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageParts:
    """What the registry holds, read from the OCI layout tarball."""

    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    layer_digests: list[str]
    chain: list[str]  # chain ID per layer, bottom first

    @property
    def blobs(self) -> list[str]:
        return [self.manifest_digest, self.config_digest, *self.layer_digests]


def _read_member(tf: tarfile.TarFile, name: str) -> bytes:
    f = tf.extractfile(name)
    assert f is not None, name
    with f:
        return f.read()


def _blob_name(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"blobs/{algorithm}/{hex_}"


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def _upload_blob(http: httpx.Client, tf: tarfile.TarFile, digest: str) -> None:
    base = f"/v2/{REPOSITORY}/blobs"
    if http.head(f"{base}/{digest}").status_code == 200:
        return
    start = http.post(f"{base}/uploads/")
    start.raise_for_status()
    location = start.headers["Location"]
    f = tf.extractfile(_blob_name(digest))
    assert f is not None, digest
    with f:
        # Appended by hand: ``params=`` would drop the ``_state`` query of the location.
        sep = "&" if "?" in location else "?"
        done = http.put(
            f"{location}{sep}digest={digest}",
            content=_chunks(f),
            headers={"Content-Type": "application/octet-stream"},
        )
    done.raise_for_status()


def upload_image(host: str, archive: Path) -> ImageParts:
    """Push the image in the OCI layout ``archive`` to ``host`` as REPOSITORY:TAG."""
    with tarfile.open(archive) as tf:
        index = json.loads(_read_member(tf, "index.json"))
        desc = index["manifests"][0]
        manifest = _read_member(tf, _blob_name(desc["digest"]))
        doc = json.loads(manifest)
        config = json.loads(_read_member(tf, _blob_name(doc["config"]["digest"])))
        parts = ImageParts(
            manifest=manifest,
            manifest_digest=desc["digest"],
            manifest_media_type=desc["mediaType"],
            config_digest=doc["config"]["digest"],
            layer_digests=[layer["digest"] for layer in doc["layers"]],
            chain=chain_ids(config["rootfs"]["diff_ids"]),
        )
        with httpx.Client(base_url=f"http://{host}", timeout=600) as http:
            for digest in [parts.config_digest, *parts.layer_digests]:
                _upload_blob(http, tf, digest)
            put = http.put(
                f"/v2/{REPOSITORY}/manifests/{TAG}",
                content=manifest,
                headers={"Content-Type": parts.manifest_media_type},
            )
            put.raise_for_status()
            assert put.headers.get("Docker-Content-Digest") == parts.manifest_digest
    return parts


def _ctr(t: Target, *args: str) -> str:
    """Go ``ctr`` in the bench namespace; its stdout."""
    proc = subprocess.run(
        [CTR, "--address", str(t.daemon.address), "-n", NAMESPACE, *args],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} on {t.name}: {proc.stderr.strip()}")
    return proc.stdout


def _blob_path(t: Target, digest: str) -> Path:
    algorithm, _, hex_ = digest.partition(":")
    return t.daemon.root / "io.containerd.content.v1.content" / "blobs" / algorithm / hex_


def _watch(stream: IO[bytes], t0: float, marks: dict[str, float], keep: list[bytes] | None) -> None:
    """Read a pull's output; note in ``marks["fetched"]`` when the fetch ended.

    Go ctr (stdout) prints "unpacking ..." once everything is fetched; pyctr (stderr,
    not a terminal) prints "layer-<digest>: done" as each layer is committed.
    """
    for line in stream:
        if keep is not None:
            keep.append(line)
            if line.startswith(b"layer-") and b": done" in line:
                marks["fetched"] = time.perf_counter() - t0
        elif b"unpacking " in line and "fetched" not in marks:
            marks["fetched"] = time.perf_counter() - t0


def _snapshots(t: Target) -> dict[str, str]:
    """Snapshot key -> kind, in the bench namespace."""
    out = _ctr(t, "snapshots", "--snapshotter", SNAPSHOTTER, "ls")
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return {row[0]: row[-1] for row in rows}


class ColdPull:
    """The workload's hooks, sharing one registry between both targets."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self.registry: Registry | None = None
        self.ref = ""
        self.parts: ImageParts | None = None
        self._pulled: set[str] = set()  # targets whose timed pull returned
        self.rounds: dict[str, list[tuple[float, float]]] = {}  # (wall, fetched at)

    def setup(self, t: Target) -> None:
        if self.registry is None:
            archive = image.cached_image()
            self._stack = contextlib.ExitStack()
            tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-reg-")))
            self.registry = self._stack.enter_context(run_registry(tmp))
            self.parts = upload_image(self.registry.host, archive)
            self.ref = f"{self.registry.host}/{REPOSITORY}:{TAG}"
        self.make_cold(t)

    def make_cold(self, t: Target) -> None:
        """Remove the image, then check nothing of it is left to reuse."""
        assert self.parts is not None
        if self.ref in _ctr(t, "images", "ls", "-q").split():
            _ctr(t, "images", "rm", "--sync", self.ref)
        listed = set(_ctr(t, "content", "ls", "-q").split()) & set(self.parts.blobs)
        if listed:
            raise AssertionError(f"{t.name}: content left after images rm --sync: {listed}")
        # On disk too: a blob kept by any namespace would be shared, not fetched.
        left = [d for d in self.parts.blobs if _blob_path(t, d).exists()]
        if left:
            raise AssertionError(f"{t.name}: blobs left after images rm --sync: {left}")
        if active := _ctr(t, "content", "active").splitlines()[1:]:
            raise AssertionError(f"{t.name}: ingests left: {active}")
        if kept := set(self.parts.chain) & set(_snapshots(t)):
            raise AssertionError(f"{t.name}: snapshots left after images rm --sync: {kept}")

    def before_target(self, t: Target, rnd: int) -> None:
        self._pulled.discard(t.name)
        self.make_cold(t)

    def run(self, t: Target, rnd: int) -> None:
        tool = PYCTR if t.name == "pycontainerd" else CTR
        argv = [tool, "--address", str(t.daemon.address), "-n", NAMESPACE]
        argv += ["images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, self.ref]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        # Both tools say when the last layer is fetched (see _watch): Go ctr fetches
        # everything, then unpacks; pyctr unpacks while later layers download.
        marks: dict[str, float] = {}
        errors: list[bytes] = []
        readers = [
            threading.Thread(target=_watch, args=(proc.stdout, t0, marks, None)),
            threading.Thread(target=_watch, args=(proc.stderr, t0, marks, errors)),
        ]
        for reader in readers:
            reader.start()
        code = proc.wait()
        for reader in readers:
            reader.join()
        wall = time.perf_counter() - t0
        if code != 0:
            text = b"".join(errors).decode(errors="replace")
            raise RuntimeError(f"{t.name}: pull failed ({code}): {text[-2000:]}")
        self._pulled.add(t.name)
        self.rounds.setdefault(t.name, []).append((wall, marks.get("fetched", float("nan"))))

    def report(self) -> list[str]:
        """Per round: wall time and when the last layer was fetched."""
        lines = []
        for name, rounds in self.rounds.items():
            each = ", ".join(f"{wall:.1f} s (fetched at {at:.1f} s)" for wall, at in rounds)
            lines.append(f"    {name:13} {each}")
        return lines

    def after_round(self, t: Target, rnd: int) -> None:
        """Check the pull fetched and unpacked everything (only when it returned)."""
        if t.name not in self._pulled:
            return
        assert self.parts is not None
        if self.ref not in _ctr(t, "images", "ls", "-q").split():
            raise AssertionError(f"{t.name}: no image record after the pull")
        have = set(_ctr(t, "content", "ls", "-q").split())
        if missing := [d for d in self.parts.blobs if d not in have]:
            raise AssertionError(f"{t.name}: content missing after the pull: {missing}")
        if missing := [d for d in self.parts.blobs if not _blob_path(t, d).exists()]:
            raise AssertionError(f"{t.name}: blobs not on disk after the pull: {missing}")
        snaps = _snapshots(t)
        if bad := [c for c in self.parts.chain if snaps.get(c) != "Committed"]:
            raise AssertionError(f"{t.name}: snapshot chain not committed: {bad} in {snaps}")

    def teardown(self, t: Target) -> None:
        try:
            if self.parts is not None:
                self.make_cold(t)  # leave no 2 GB behind for the next workloads
        finally:
            if self._stack is not None:
                # The registry is only needed while rounds run; both teardowns follow them.
                stack, self._stack, self.registry = self._stack, None, None
                stack.close()
