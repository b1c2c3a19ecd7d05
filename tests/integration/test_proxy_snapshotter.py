"""Proxy snapshotters: ``pycontainerd snapshotter serve`` as its own process, a daemon
with ``[proxy_plugins.remote]`` pointing at it, driven by Debian's Go ctr; and the full
conformance suite, with mounts, through the proxy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pycontainerd import harness
from pycontainerd.images import build
from pycontainerd.plugin.registry import SkipPlugin
from pycontainerd.snapshots import serve, testsuite
from pycontainerd.snapshots.interface import Snapshotter
from pycontainerd.snapshots.mount import MNT_DETACH, unmount
from pycontainerd.snapshots.native import NativeSnapshotter
from pycontainerd.snapshots.overlay import OverlaySnapshotter
from pycontainerd.snapshots.proxy import ProxySnapshotter
from tests.integration.conftest import TEST_CONFIG, Ctr
from tests.integration.test_snapshotters_backend import mounts_under


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108 bytes a unix socket path may have.
    d = Path(tempfile.mkdtemp(prefix="pxy-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def serve_argv(kind: str, root: Path, address: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pycontainerd.cli.daemon",
        "snapshotter",
        "serve",
        "--snapshotter",
        kind,
        "--root",
        str(root),
        "--address",
        str(address),
    ]


@pytest.fixture
def remote(tmp_path: Path, sockdir: Path) -> Iterator[harness.Daemon]:
    """``pycontainerd snapshotter serve --snapshotter native``, ready (READY=1)."""
    base = tmp_path / "remote"
    base.mkdir()
    address = sockdir / "sn.sock"
    d = harness.start(
        serve_argv("native", base / "root", address),
        address=address,
        root=base / "root",
        state=base / "root",
        log_path=base / "serve.log",
    )
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log()
        assert not address.exists(), "the socket was left behind"


def proxy_config(tmp_path: Path, address: Path, extra: str = "") -> Path:
    config = tmp_path / "proxy-config.toml"
    config.write_text(
        f'{TEST_CONFIG}\n[proxy_plugins.remote]\ntype = "snapshot"\naddress = "{address}"\n{extra}'
    )
    return config


@pytest.fixture
def proxied(tmp_path: Path, remote: harness.Daemon) -> Iterator[Ctr]:
    """A daemon whose ``remote`` snapshotter is the served one."""
    base = tmp_path / "daemon"
    base.mkdir()
    config = proxy_config(tmp_path, remote.address)
    with harness.pycontainerd(base, "--config", str(config)) as d:
        yield Ctr(d.address)


def _plugin_rows(ctr: Ctr) -> list[list[str]]:
    return [line.split() for line in ctr("plugins", "ls").stdout.splitlines()[1:]]


def test_plugins_ls_shows_the_proxy(proxied: Ctr, remote: harness.Daemon) -> None:
    rows = _plugin_rows(proxied)
    assert ["io.containerd.snapshotter.v1", "remote", "linux/amd64", "ok"] in rows
    ids = [r[1] for r in rows]
    assert ids.index("remote") < ids.index("sqlite")  # metadata comes after it
    detail = " ".join(proxied("plugins", "ls", "-d", "id==remote").stdout.split())
    assert f"address {remote.address}" in detail


def test_snapshot_commands_go_to_the_remote(
    proxied: Ctr, remote: harness.Daemon, tmp_path: Path
) -> None:
    s = ("snapshots", "--snapshotter", "remote")
    proxied(*s, "prepare", "base-active")
    line = proxied(*s, "mounts", str(tmp_path / "m"), "base-active").stdout
    assert line.startswith("mount -t bind ")  # native's mounts, from the other process
    assert str(remote.root) in line
    (tmp_path / "m").mkdir()
    subprocess.run(line, shell=True, check=True)
    try:
        (tmp_path / "m" / "hello").write_text("hi\n")
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
    proxied(*s, "commit", "base", "base-active")
    proxied(*s, "prepare", "child", "base", "--mounts")
    proxied(*s, "label", "base", "team=a")
    rows = [r.split() for r in proxied(*s, "ls").stdout.splitlines()]
    assert sorted(tuple(r) for r in rows[1:]) == [
        ("base", "Committed"),
        ("child", "base", "Active"),
    ]
    info = proxied(*s, "info", "base").stdout
    assert '"Kind": "Committed"' in info and '"team": "a"' in info
    assert proxied(*s, "usage", "base").stdout.splitlines()[1].split()[0] == "base"
    # The data lives in the served snapshotter's root: the child's copy has the file.
    copies = list((remote.root / "snapshots").glob("*/hello"))
    assert len(copies) == 2 and all(p.read_text() == "hi\n" for p in copies)

    # Go ctr straight at the served socket: the backend keys the metadata layer made
    # (namespace-prefixed), whatever snapshotter name the request carries.
    direct = Ctr(remote.address)
    backend_rows = direct("snapshots", "--snapshotter", "whatever", "ls").stdout.splitlines()
    assert len(backend_rows) == 3 and all("default/" in r for r in backend_rows[1:])

    res = proxied(*s, "rm", "base", check=False)
    assert res.returncode != 0 and "failed precondition" in res.stderr
    res = proxied(*s, "info", "nope", check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    proxied(*s, "rm", "child")
    proxied(*s, "rm", "base")
    assert proxied(*s, "ls").stdout.splitlines()[1:] == []
    # The backend's copies go at the next collection (a synchronous lease removal).
    assert len(direct("snapshots", "ls").stdout.splitlines()) == 3
    proxied("leases", "rm", "--sync", proxied("leases", "create").stdout.strip())
    assert direct("snapshots", "ls").stdout.splitlines()[1:] == []


def test_import_and_mount_image_on_the_remote(proxied: Ctr, tmp_path: Path) -> None:
    ref = "example.com/test/proxy:v1"
    archive = tmp_path / "img.tar"
    layers = [build.busybox_files(), {"data": build.File(b"layer two\n")}]
    build.write_oci_archive(build.make_image(layers), archive, ref)
    proxied("images", "import", "--snapshotter", "remote", str(archive), timeout=300)
    target = tmp_path / "rootfs"
    target.mkdir()
    proxied("images", "mount", "--snapshotter", "remote", ref, str(target))
    try:
        assert (target / "data").read_text() == "layer two\n"
        assert (target / "bin" / "sh").exists()
    finally:
        proxied("images", "unmount", "--rm", str(target))
    proxied("images", "rm", "--sync", ref)
    rows = proxied("snapshots", "--snapshotter", "remote", "ls").stdout.splitlines()
    assert rows[1:] == []


def test_unserved_proxy_is_a_plugin_error(tmp_path: Path, sockdir: Path) -> None:
    config = proxy_config(tmp_path, sockdir / "nobody.sock")
    with harness.pycontainerd(tmp_path, "--config", str(config)) as d:
        ctr = Ctr(d.address)
        [row] = [r for r in _plugin_rows(ctr) if r[1] == "remote"]
        assert row[-1] == "error"
        res = ctr("snapshots", "--snapshotter", "remote", "ls", check=False)
        assert res.returncode != 0 and "snapshotter not loaded: remote" in res.stderr
        # Everything else still works, other snapshotters included.
        ctr("snapshots", "--snapshotter", "native", "prepare", "x")
        assert "cannot reach snapshotter 'remote'" in d.log()


def test_a_content_proxy_stops_start_up(tmp_path: Path, sockdir: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        f'version = 2\n[proxy_plugins.cs]\ntype = "content"\naddress = "{sockdir}/c"\n'
    )
    with (
        pytest.raises(harness.DaemonError, match="content proxy plugins are not supported"),
        harness.pycontainerd(tmp_path, "--config", str(config)),
    ):
        pass


def test_serve_refuses_a_socket_in_use(remote: harness.Daemon, tmp_path: Path) -> None:
    res = subprocess.run(
        serve_argv("native", tmp_path / "other", remote.address), capture_output=True, timeout=60
    )
    assert res.returncode == 1
    assert b"another daemon is already serving" in res.stderr


# --- conformance through the proxy, with real mounts ---------------------------------------


@pytest.fixture(params=["overlayfs", "native"])
async def subject(
    request: pytest.FixtureRequest, tmp_path: Path, sockdir: Path
) -> AsyncIterator[testsuite.Subject]:
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    backend: Snapshotter
    if request.param == "overlayfs":
        try:
            backend = await OverlaySnapshotter.open(root)
        except SkipPlugin as exc:
            pytest.skip(str(exc))
    else:
        backend = await NativeSnapshotter.open(root)
    address = sockdir / "sn.sock"
    server = await serve.serve(backend, address)
    proxy = await ProxySnapshotter.connect(str(address), "remote")
    try:
        yield testsuite.Subject(proxy, work, root=root)
    finally:
        await proxy.aclose()
        await serve.stop(server, address, grace=1)
        await backend.aclose()
        leftover = mounts_under(tmp_path)
        for point in leftover:
            unmount(point, MNT_DETACH)
        assert not leftover, f"the case left mounts behind: {leftover}"


@pytest.mark.parametrize("case", testsuite.CASES, ids=lambda c: c.name)
async def test_conformance_through_proxy(case: testsuite.Case, subject: testsuite.Subject) -> None:
    if reason := case.unsupported(subject):
        pytest.skip(reason)
    await case.run(subject)
