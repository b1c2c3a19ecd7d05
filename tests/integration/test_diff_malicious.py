"""The malicious-layer corpus applied through a daemon's gRPC Diff service.

Each layer goes into the daemon's content store through the Content service, a
snapshot is prepared through the Snapshots service (a child of a committed base, so
overlayfs hands out an overlay mount with an upper directory and native a bind mount
of a copy), and ``containerd.services.diff.v1.Diff/Apply`` unpacks it. Around every
apply we check that nothing outside the target snapshot changed: the rest of the
snapshotter's tree, a sentinel directory next to the daemon root that the layers aim
their symlinks at, and host files (``/etc/passwd``, ``/etc/shadow``). After every
malicious layer a normal layer must still apply: the daemon keeps serving.

The same cases run against Debian's containerd (the ``reference`` fixture) where the
outcome can be compared: which layers it refuses, and the descriptor it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pycontainerd import harness
from pycontainerd._api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from pycontainerd._api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from pycontainerd._api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from pycontainerd._api.containerd.types import descriptor_pb2, mount_pb2
from pycontainerd.sansio import tar
from pycontainerd.sansio.tar import TarHeader
from tests.integration.conftest import Ctr
from tests.unit.test_archive_helpers import d, f, gz, hard, layer, sym, tree

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
HOST_FILES = [Path("/etc/passwd"), Path("/etc/shadow"), Path("/etc/hostname")]
SNAPSHOTTERS = ["overlayfs", "native"]
NAMESPACE = "diff-corpus"


def _host_state() -> dict[str, tuple[object, ...]]:
    state: dict[str, tuple[object, ...]] = {}
    for p in HOST_FILES:
        if p.exists():
            st = p.lstat()
            state[str(p)] = (st.st_ino, st.st_nlink, st.st_mtime_ns, p.read_bytes())
    return state


class DiffClient:
    """The Content, Snapshots, Leases and Diff services of one daemon, over grpc."""

    def __init__(self, address: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.content = content_pb2_grpc.ContentStub(self.channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.diff = diff_pb2_grpc.DiffStub(self.channel)
        leases = leases_pb2_grpc.LeasesStub(self.channel)
        meta: tuple[tuple[str, str | bytes], ...] = (("containerd-namespace", NAMESPACE),)
        # A lease keeps blobs and snapshots from the garbage collector.
        lease = leases.Create(
            leases_pb2.CreateRequest(id=f"corpus-{secrets.token_hex(4)}"), metadata=meta
        )
        self.metadata = (*meta, ("containerd-lease", lease.lease.id))

    def close(self) -> None:
        self.channel.close()

    def write_blob(self, blob: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        request = content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT,
            ref=f"corpus-{secrets.token_hex(6)}",
            total=len(blob),
            expected=digest,
            offset=0,
            data=blob,
        )
        for _ in self.content.Write(iter([request]), metadata=self.metadata):
            pass
        return digest

    def prepare(self, snapshotter: str, key: str, parent: str = "") -> Sequence[mount_pb2.Mount]:
        req = snapshots_pb2.PrepareSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent)
        return list(self.snapshots.Prepare(req, metadata=self.metadata).mounts)

    def commit(self, snapshotter: str, name: str, key: str) -> None:
        req = snapshots_pb2.CommitSnapshotRequest(snapshotter=snapshotter, name=name, key=key)
        self.snapshots.Commit(req, metadata=self.metadata)

    def remove(self, snapshotter: str, key: str) -> None:
        req = snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
        self.snapshots.Remove(req, metadata=self.metadata)

    def apply(
        self, blob: bytes, mounts: Sequence[mount_pb2.Mount], media_type: str = OCI_TAR
    ) -> descriptor_pb2.Descriptor:
        digest = self.write_blob(blob)
        desc = descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=len(blob))
        req = diff_pb2.ApplyRequest(diff=desc, mounts=mounts)
        return self.diff.Apply(req, metadata=self.metadata, timeout=60).applied


def _snapshot_dir(mounts: Sequence[mount_pb2.Mount]) -> Path:
    """The directory a layer applied to these mounts is written into."""
    (m,) = mounts
    if m.type == "overlay":
        opts = dict(o.split("=", 1) for o in m.options if "=" in o)
        return Path(opts["upperdir"])
    return Path(m.source)


@dataclass
class World:
    client: DiffClient
    root: Path  # the daemon's root
    outside: Path  # a sentinel tree next to it: the layers aim at it
    snapshotter: str
    counter: int = 0

    def fresh(self) -> tuple[str, Sequence[mount_pb2.Mount]]:
        """A new active snapshot over the committed base."""
        self.counter += 1
        key = f"active-{self.counter}"
        return key, self.client.prepare(self.snapshotter, key, "base")

    def around(self, target: Path) -> tuple[object, ...]:
        """Everything the apply to ``target`` must not change."""
        snapshots = target.parent.parent
        rel = str(target.parent.relative_to(snapshots))
        rest = {
            k: v
            for k, v in tree(snapshots, mtimes=False).items()
            if k != rel and not k.startswith(rel + "/")
        }
        return rest, tree(self.outside), _host_state()

    def apply(
        self, blob: bytes, media_type: str = OCI_TAR
    ) -> tuple[descriptor_pb2.Descriptor | grpc.RpcError, Path]:
        """Apply ``blob`` to a fresh snapshot; (descriptor or the RPC error, its dir)."""
        _, mounts = self.fresh()
        target = _snapshot_dir(mounts)
        before = self.around(target)
        result: descriptor_pb2.Descriptor | grpc.RpcError
        try:
            result = self.client.apply(blob, mounts, media_type)
        except grpc.RpcError as exc:
            result = exc
        assert self.around(target) == before, "something outside the snapshot changed"
        return result, target

    def fails(
        self, blob: bytes, code: grpc.StatusCode, *words: str, media_type: str = OCI_TAR
    ) -> str:
        result, _ = self.apply(blob, media_type)
        assert isinstance(result, grpc.RpcError), f"applied: {result}"
        assert result.code() == code, (result.code(), result.details())
        message = result.details() or ""
        for word in words:
            assert word in message, message
        self.still_serving()
        return message

    def still_serving(self) -> None:
        raw = layer(f("etc/ok", b"ok"))
        result, target = self.apply(gz(raw), OCI_TAR_GZIP)
        assert not isinstance(result, grpc.RpcError), result
        assert (target / "etc/ok").read_bytes() == b"ok"


@contextlib.contextmanager
def _world(address: Path, root: Path, base: Path, snapshotter: str) -> Iterator[World]:
    outside = base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sentinel").write_bytes(b"do not touch")
    os.symlink("sentinel", outside / "alias")
    client = DiffClient(address)
    try:
        mounts = client.prepare(snapshotter, "base-key")
        client.apply(layer(d("etc/"), f("etc/base", b"base"), d("lib/")), mounts)
        client.commit(snapshotter, "base", "base-key")
        yield World(client, root, outside, snapshotter)
    finally:
        client.close()


@pytest.fixture(params=SNAPSHOTTERS)
def world(
    request: pytest.FixtureRequest, daemon: harness.Daemon, tmp_path: Path
) -> Iterator[World]:
    with _world(daemon.address, daemon.root, tmp_path, request.param) as w:
        yield w


# ---------------------------------------------------------------------------
# Layers that apply, confined to the snapshot
# ---------------------------------------------------------------------------


def test_dotdot_paths_are_clamped_into_the_snapshot(world: World) -> None:
    out = str(world.outside).lstrip("/")
    result, target = world.apply(
        layer(
            f("../../../../../../../../etc/passwd", b"root::0:0::/:/bin/sh\n"),
            f("../../../../../../../../" + out + "/sentinel", b"owned"),
            f("a/../../../b", b"b"),
        )
    )
    assert not isinstance(result, grpc.RpcError), result
    assert (target / "etc/passwd").read_bytes().startswith(b"root::")
    assert (target / out / "sentinel").read_bytes() == b"owned"
    assert (target / "b").exists()
    world.still_serving()


def test_absolute_symlink_and_symlinked_parents(world: World) -> None:
    out = str(world.outside)
    result, target = world.apply(
        layer(
            sym("evil", out),
            sym("up", "../../../../../../../.."),
            f("evil/sentinel", b"owned"),
            f("up" + out + "/alias", b"owned"),
            d("evil/newdir/"),
            f("evil/newdir/f", b"f"),
        )
    )
    assert not isinstance(result, grpc.RpcError), result
    inside = target / out.lstrip("/")
    assert (inside / "sentinel").read_bytes() == b"owned"
    assert (inside / "alias").read_bytes() == b"owned"
    assert (inside / "newdir/f").exists()
    assert os.readlink(target / "evil") == out
    world.still_serving()


def test_device_nodes_are_made_as_root(world: World) -> None:
    # containerd makes device nodes when it is not in a user namespace; the daemon
    # runs as root, so they are kept.
    result, target = world.apply(
        layer(
            TarHeader(name="dev/null", typeflag=tar.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
            TarHeader(name="dev/sda", typeflag=tar.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        )
    )
    assert not isinstance(result, grpc.RpcError), result
    null = (target / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    sda = (target / "dev/sda").lstat()
    assert stat.S_ISBLK(sda.st_mode) and sda.st_rdev == os.makedev(8, 0)
    world.still_serving()


# ---------------------------------------------------------------------------
# Layers that are refused, with a clear error
# ---------------------------------------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("linkname", ["../../../../etc/shadow", "a/../../../../etc/passwd"])
def test_hardlink_escape(world: World, linkname: str) -> None:
    world.fails(layer(d("a/"), hard("link", linkname)), INVALID, "'link'", "escapes")


def test_hardlink_to_outside_through_a_symlink(world: World) -> None:
    world.fails(layer(sym("o", str(world.outside)), hard("h", "o/sentinel")), INVALID, "'h'")


@pytest.mark.parametrize("name", [".wh...", "a/.wh.."])
def test_whiteout_of_dotdot(world: World, name: str) -> None:
    world.fails(layer(d("a/"), f(name)), INVALID, repr(name))


def test_size_bomb_header(world: World) -> None:
    header = tar.encode_header(TarHeader(name="usr/lib/huge.img", size=10 << 30))
    blob = gz(tar.encode_entry(TarHeader(name="first", size=3), b"abc") + header + b"x" * 1000)
    world.fails(blob, INVALID, "'usr/lib/huge.img'", "10737418240", media_type=OCI_TAR_GZIP)


def test_truncated_gzip_stream(world: World) -> None:
    blob = gz(layer(f("a", b"1"), f("payload.bin", os.urandom(1 << 20)), f("z", b"z")))
    world.fails(blob[: len(blob) // 2], INVALID, "gzip", "'payload.bin'", media_type=OCI_TAR_GZIP)


def test_unknown_media_type(world: World) -> None:
    world.fails(
        layer(f("a")),
        grpc.StatusCode.UNIMPLEMENTED,
        "application/vnd.oci.image.layer.v1.tar+encrypted",
        media_type="application/vnd.oci.image.layer.v1.tar+encrypted",
    )


# ---------------------------------------------------------------------------
# The applied descriptor (the diffID the unpacker checks) and failures half-way
# ---------------------------------------------------------------------------


def test_applied_descriptor_is_the_uncompressed_layer(world: World) -> None:
    raw = layer(d("usr/"), f("usr/a", os.urandom(300_000)), sym("usr/b", "a"))
    result, _ = world.apply(gz(raw), OCI_TAR_GZIP)
    assert not isinstance(result, grpc.RpcError), result
    assert result.media_type == OCI_TAR
    assert result.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)


def _files_under(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_failed_apply_leaves_a_removable_snapshot_and_no_temp_files(
    world: World, daemon: harness.Daemon
) -> None:
    blob = gz(layer(f("a", b"1"), f("big", os.urandom(1 << 20)), f("z", b"z")))
    key, mounts = world.fresh()
    target = _snapshot_dir(mounts)
    with pytest.raises(grpc.RpcError) as info:
        world.client.apply(blob[: len(blob) // 2], mounts, OCI_TAR_GZIP)
    assert info.value.code() == INVALID
    # What arrived before the cut is there; the client removes the snapshot.
    assert (target / "a").exists()
    # Removed from the metadata at once (its directory goes at the next collection).
    world.client.remove(world.snapshotter, key)
    stat_request = snapshots_pb2.StatSnapshotRequest(snapshotter=world.snapshotter, key=key)
    with pytest.raises(grpc.RpcError) as gone:
        world.client.snapshots.Stat(stat_request, metadata=world.client.metadata)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    # No mounts, temporary directories or half-written blobs are left behind.
    work = daemon.root / "io.containerd.differ.v1.walking"
    assert _files_under(work / "work") == set()
    ingest = daemon.root / "io.containerd.content.v1.content" / "ingest"
    assert _files_under(ingest) == set()
    mounts_now = Path("/proc/self/mountinfo").read_text()
    assert str(daemon.root) not in mounts_now
    world.still_serving()


# ---------------------------------------------------------------------------
# The same layers through Debian's containerd
# ---------------------------------------------------------------------------


def _reference_world(reference: Ctr, tmp_path: Path) -> contextlib.AbstractContextManager[World]:
    base = tmp_path / "reference"
    return _world(reference.address, base / "root", base / "corpus", "overlayfs")


def test_reference_returns_the_same_applied_descriptor(
    daemon: harness.Daemon, reference: Ctr, tmp_path: Path
) -> None:
    raw = layer(d("usr/"), f("usr/a", os.urandom(100_000)), sym("usr/b", "a"))
    blob = gz(raw)
    results = []
    with (
        _world(daemon.address, daemon.root, tmp_path / "ours", "overlayfs") as ours,
        _reference_world(reference, tmp_path) as theirs,
    ):
        for w in (ours, theirs):
            result, _ = w.apply(blob, OCI_TAR_GZIP)
            assert not isinstance(result, grpc.RpcError), result
            results.append((result.media_type, result.digest, result.size))
    assert results[0] == results[1]


def _bomb() -> bytes:
    header = tar.encode_header(TarHeader(name="usr/lib/huge.img", size=10 << 30))
    return gz(tar.encode_entry(TarHeader(name="first", size=3), b"abc") + header + b"x" * 1000)


def _truncated() -> bytes:
    blob = gz(layer(f("a", b"1"), f("payload.bin", os.urandom(1 << 20)), f("z", b"z")))
    return blob[: len(blob) // 2]


REFUSED_LAYERS = {
    "hardlink-escape": lambda out: layer(d("a/"), hard("link", "../../../../etc/shadow")),
    "hardlink-through-symlink": lambda out: layer(sym("o", out), hard("h", "o/sentinel")),
    "whiteout-dotdot": lambda out: gz(layer(d("a/"), f("a/.wh.."))),
    "size-bomb": lambda out: _bomb(),
    "truncated-gzip": lambda out: _truncated(),
}


@pytest.mark.parametrize("case", sorted(REFUSED_LAYERS))
def test_reference_refuses_the_same_layers(reference: Ctr, tmp_path: Path, case: str) -> None:
    """containerd refuses each of them too, always with UNKNOWN (its archive errors
    carry no errdefs kind: "unexpected EOF", "link ...: no such file or directory",
    "invalid whiteout name"); we answer INVALID_ARGUMENT with the entry named, since
    the layer is the argument at fault. Clients treat both as a failed unpack."""
    with _reference_world(reference, tmp_path) as w:
        result, _ = w.apply(REFUSED_LAYERS[case](str(w.outside)), OCI_TAR_GZIP)
        assert isinstance(result, grpc.RpcError), result
        assert result.code() == grpc.StatusCode.UNKNOWN
        w.still_serving()


@pytest.mark.parametrize("case", sorted(REFUSED_LAYERS))
def test_we_refuse_the_same_layers(world: World, case: str) -> None:
    world.fails(REFUSED_LAYERS[case](str(world.outside)), INVALID, media_type=OCI_TAR_GZIP)


def test_reference_makes_device_nodes_as_root(reference: Ctr, tmp_path: Path) -> None:
    """What test_device_nodes_are_made_as_root asserts of us, containerd does too."""
    with _reference_world(reference, tmp_path) as w:
        result, target = w.apply(
            layer(TarHeader(name="dev/null", typeflag=tar.CHRTYPE, devmajor=1, devminor=3))
        )
        assert not isinstance(result, grpc.RpcError), result
        null = (target / "dev/null").lstat()
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
