"""The proxy snapshotter against ``snapshots.serve`` over a unix socket, backed by the
native snapshotter: the conformance cases that need no mounts, error kinds across the
wire, and the proxy plugin's registration. No root needed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from pycontainerd import config as configmod
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from pycontainerd._api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from pycontainerd.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from pycontainerd.images.platforms import Platform as ImagePlatform
from pycontainerd.images.platforms import parse_platform
from pycontainerd.plugin import InitContext, PluginSet
from pycontainerd.plugin.registry import Meta, Platform
from pycontainerd.server.server import Server, proxy_registrations
from pycontainerd.snapshots import serve, testsuite
from pycontainerd.snapshots.interface import Info, Kind
from pycontainerd.snapshots.native import NativeSnapshotter
from pycontainerd.snapshots.proxy import ProxySnapshotter, registration


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108 bytes a unix socket path may have.
    d = Path(tempfile.mkdtemp(prefix="pxy-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[NativeSnapshotter]:
    sn = await NativeSnapshotter.open(tmp_path / "root")
    try:
        yield sn
    finally:
        await sn.aclose()


@pytest.fixture
async def address(backend: NativeSnapshotter, sockdir: Path) -> AsyncIterator[Path]:
    address = sockdir / "sn.sock"
    server = await serve.serve(backend, address)
    try:
        yield address
    finally:
        await serve.stop(server, address, grace=1)


@pytest.fixture
async def proxy(address: Path) -> AsyncIterator[ProxySnapshotter]:
    sn = await ProxySnapshotter.connect(str(address), "remote")
    try:
        yield sn
    finally:
        await sn.aclose()


@pytest.fixture
async def subject(tmp_path: Path, proxy: ProxySnapshotter) -> testsuite.Subject:
    work = tmp_path / "work"
    work.mkdir()
    # Server and client share this file system, so the layout cases can look at it.
    return testsuite.Subject(proxy, work, root=tmp_path / "root", can_mount=False)


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance_without_mounts(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    await case.run(subject)


async def test_results_match_the_backend(
    proxy: ProxySnapshotter, backend: NativeSnapshotter
) -> None:
    mounts = await proxy.prepare("a", labels={"x": "1"})
    assert mounts == await backend.mounts("a")
    assert mounts[0].type == "bind"
    await proxy.commit("A", "a", labels={"y": "2"})
    assert await proxy.stat("A") == await backend.stat("A")
    assert (await proxy.stat("A")).created_at > 0
    assert await proxy.view("v", "A") == await backend.mounts("v")
    assert await proxy.usage("A") == await backend.usage("A")
    updated = await proxy.update(Info(Kind.COMMITTED, "A", labels={"z": "3"}), ["labels.z"])
    assert dict(updated.labels) == {"y": "2", "z": "3"}
    assert [i.name async for i in proxy.walk(["kind==view"])] == ["v"]


async def test_error_kinds_cross_the_wire(proxy: ProxySnapshotter) -> None:
    with pytest.raises(NotFound):
        await proxy.stat("missing")
    await proxy.prepare("a")
    with pytest.raises(AlreadyExists):
        await proxy.prepare("a")
    with pytest.raises(InvalidArgument):
        await proxy.prepare("b", "a")  # the parent is active
    await proxy.commit("A", "a")
    with pytest.raises(FailedPrecondition):
        await proxy.mounts("A")
    await proxy.prepare("c", "A")
    with pytest.raises(FailedPrecondition):
        await proxy.remove("A")  # has a child


async def test_walk_streams_many_blocks(proxy: ProxySnapshotter) -> None:
    names = {f"k{i:03}" for i in range(250)}  # three List blocks of at most 100
    for n in names:
        await proxy.view(n)
    assert {i.name async for i in proxy.walk()} == names
    # Stopping early cancels the stream; the channel stays usable.
    async for _ in proxy.walk():
        break
    assert (await proxy.stat("k000")).kind == Kind.VIEW


async def test_requests_name_the_proxy(address: Path) -> None:
    """Like containerd's proxy, every request carries the configured name, and the
    server answers whatever name a client uses."""
    seen: list[str] = []
    sn = ProxySnapshotter(str(address), "remote")
    try:
        orig = sn._stub.Prepare

        async def spy(request: pb.PrepareSnapshotRequest, **kw: Any) -> Any:
            seen.append(request.snapshotter)
            return await orig(request, **kw)

        sn._stub.Prepare = spy  # type: ignore[assignment]
        await sn.prepare("k")
    finally:
        await sn.aclose()
    assert seen == ["remote"]
    async with grpc.aio.insecure_channel(f"unix:{address}") as ch:
        req = pb.StatSnapshotRequest(snapshotter="anything", key="k")
        resp = await pb_grpc.SnapshotsStub(ch).Stat(req)
    assert (resp.info.name, resp.info.kind) == ("k", pb.ACTIVE)


async def test_unreachable_socket_is_unavailable(sockdir: Path) -> None:
    with pytest.raises(Unavailable, match="cannot reach snapshotter 'remote'"):
        await ProxySnapshotter.connect(str(sockdir / "nobody.sock"), "remote")
    sn = ProxySnapshotter(str(sockdir / "nobody.sock"), "remote")
    try:
        with pytest.raises(Unavailable):
            await sn.stat("x")
    finally:
        await sn.aclose()


async def test_a_server_without_the_service_is_refused(sockdir: Path) -> None:
    server = grpc.aio.server()
    server.add_insecure_port(f"unix:{sockdir / 'other.sock'}")
    await server.start()
    try:
        with pytest.raises(Unavailable, match="does not serve"):
            await ProxySnapshotter.connect(str(sockdir / "other.sock"), "remote")
    finally:
        await server.stop(None)


async def test_registration_reports_address_and_platform(address: Path, tmp_path: Path) -> None:
    reg = registration("remote", str(address), "linux/arm64")
    assert reg.uri == "io.containerd.snapshotter.v1.remote"
    ic: InitContext[None] = InitContext(
        registration=reg,
        root=tmp_path,
        state=tmp_path,
        config=None,
        plugins=PluginSet(),
        meta=Meta(),
    )
    sn = await reg.init(ic)
    try:
        assert isinstance(sn, ProxySnapshotter)
        assert ic.meta.exports == {"address": str(address)}
        assert ic.meta.platforms == [Platform("linux", "arm64", "")]
    finally:
        await sn.aclose()


async def test_registration_of_unreachable_proxy_fails_its_init(
    sockdir: Path, tmp_path: Path
) -> None:
    reg = registration("remote", str(sockdir / "nobody.sock"))
    ic: InitContext[None] = InitContext(
        registration=reg, root=tmp_path, state=tmp_path, config=None, plugins=PluginSet()
    )
    with pytest.raises(Unavailable, match="proxy plugin remote: cannot reach"):
        await reg.init(ic)
    assert ic.meta.exports["address"] == str(sockdir / "nobody.sock")


def _config(**proxies: configmod.ProxyPlugin) -> configmod.Config:
    return configmod.Config(proxy_plugins=dict(proxies))


def test_proxy_registrations_by_type() -> None:
    cfg = _config(
        a=configmod.ProxyPlugin(type="snapshot", address="/x.sock"),
        b=configmod.ProxyPlugin(type="io.containerd.snapshotter.v1", address="/y.sock"),
    )
    assert [r.uri for r in proxy_registrations(cfg)] == [
        "io.containerd.snapshotter.v1.a",
        "io.containerd.snapshotter.v1.b",
    ]
    with pytest.raises(InvalidArgument, match=r"proxy_plugins\.c: type 'content'.*not supported"):
        proxy_registrations(_config(c=configmod.ProxyPlugin(type="content", address="/z")))
    with pytest.raises(InvalidArgument, match=r"proxy_plugins\.d: unknown proxy plugin type"):
        proxy_registrations(_config(d=configmod.ProxyPlugin(type="diff", address="/z")))
    with pytest.raises(InvalidArgument, match=r"proxy_plugins\.e: address is required"):
        proxy_registrations(_config(e=configmod.ProxyPlugin(type="snapshot", address="")))
    with pytest.raises(InvalidArgument, match=r"proxy_plugins\.f: platform"):
        proxy_registrations(
            _config(f=configmod.ProxyPlugin(type="snapshot", address="/z", platform="a/b/c/d"))
        )


def test_proxy_plugins_parse_from_toml() -> None:
    cfg = configmod.parse(
        'version = 2\n[proxy_plugins.remote]\ntype = "snapshot"\naddress = "/run/sn.sock"\n'
    )
    assert cfg.proxy_plugins == {
        "remote": configmod.ProxyPlugin(type="snapshot", address="/run/sn.sock")
    }


async def test_server_refuses_bad_proxy_config_at_start(tmp_path: Path) -> None:
    cfg = configmod.Config(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        proxy_plugins={"c": configmod.ProxyPlugin(type="content", address="/z")},
    )
    with pytest.raises(InvalidArgument, match=r"proxy_plugins\.c"):
        await Server(cfg, []).start()
    assert not (tmp_path / "root").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux/amd64", ImagePlatform("linux", "amd64")),
        ("linux/x86_64", ImagePlatform("linux", "amd64")),
        ("Linux/aarch64", ImagePlatform("linux", "arm64")),
        ("linux/arm64/v8", ImagePlatform("linux", "arm64", "v8")),  # as containerd 1.6 parses it
        ("linux/arm", ImagePlatform("linux", "arm", "")),
        ("linux/armhf", ImagePlatform("linux", "arm", "")),
        ("linux/arm/6", ImagePlatform("linux", "arm", "v6")),
        ("windows/amd64", ImagePlatform("windows", "amd64")),
        ("macos/arm64", ImagePlatform("darwin", "arm64")),
        ("s390x", ImagePlatform("linux", "s390x")),
    ],
)
def test_parse_platform(spec: str, expected: ImagePlatform) -> None:
    assert parse_platform(spec) == expected


@pytest.mark.parametrize("spec", ["linux/*", "linux/am d64", "nonsense", "a/b/c/d", ""])
def test_parse_platform_rejects(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_platform(spec)


async def test_close_twice(address: Path) -> None:
    sn = ProxySnapshotter(str(address), "remote")
    [m] = await sn.prepare("a")
    assert m.options == ("rbind", "rw")
    await sn.aclose()
    await sn.aclose()
