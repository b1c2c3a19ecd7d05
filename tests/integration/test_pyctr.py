"""pyctr and the Python client against our daemon and against Debian's containerd."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from pycontainerd import __version__, harness
from pycontainerd.client import Client
from pycontainerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.integration.conftest import Ctr, start_reference_containerd


def pyctr(address: Path, *args: str) -> tuple[int, str, str]:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pycontainerd.cli.pyctr", "-a", str(address), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_pyctr_commands(daemon: harness.Daemon) -> None:
    rc, out, _ = pyctr(daemon.address, "version")
    assert rc == 0 and f"Version:  {__version__}" in out.split("Server:")[1]
    rc, out, _ = pyctr(daemon.address, "plugins", "ls")
    assert rc == 0 and "io.containerd.grpc.v1" in out and " ok" in out
    assert pyctr(daemon.address, "namespaces", "create", "p1", "a=b")[0] == 0
    rc, _, err = pyctr(daemon.address, "namespaces", "create", "p1")
    assert rc == 1 and err.strip() == 'pyctr: namespace "p1": already exists'
    rc, _, err = pyctr(daemon.address, "namespaces", "create", "bad name")
    assert rc == 1 and "must match" in err
    assert pyctr(daemon.address, "namespaces", "label", "p1", "c=d")[0] == 0
    rc, out, _ = pyctr(daemon.address, "namespaces", "ls")
    assert "p1" in out and "a=b,c=d" in out
    rc, out, _ = pyctr(daemon.address, "namespaces", "ls", "--format", "json")
    assert '"labels": {"a": "b", "c": "d"}' in out
    rc, _, err = pyctr(daemon.address, "namespaces", "rm", "nope")
    assert rc == 1 and 'namespace "nope": not found' in err


def test_client_library_errors_and_events(daemon: harness.Daemon) -> None:
    with Client(str(daemon.address)) as c:
        assert c.version().version == __version__
        c.create_namespace("lib", {"x": "y"})
        with pytest.raises(AlreadyExists):
            c.create_namespace("lib")
        with pytest.raises(InvalidArgument):
            c.plugins(["id=="])
        with pytest.raises(NotFound):
            c.delete_namespace("nope")
        got: list[str] = []
        ready = threading.Event()

        def listen() -> None:
            with Client(str(daemon.address)) as sub:
                for env in sub.events(['topic=="/namespaces/delete"']):
                    got.append(env.event.name)
                    if env.event.name == "lib":
                        return

        t = threading.Thread(target=listen)
        t.start()
        # a probe namespace deleted until the listener has seen one: it is subscribed
        i = 0
        while not got:
            c.create_namespace(f"probe{i}")
            c.delete_namespace(f"probe{i}")
            i += 1
            ready.wait(0.05)
        c.delete_namespace("lib")
        t.join(10)
        assert got[-1] == "lib"


def test_client_works_against_containerd(tmp_path: Path) -> None:
    d = start_reference_containerd(tmp_path)
    try:
        with Client(str(d.address), namespace="lib") as c:
            assert c.version().version.startswith("1.6")
            assert any(p.id == "overlayfs" and p.status == "ok" for p in c.plugins())
            c.create_namespace("ours", {"k": "v"})
            assert ("ours", {"k": "v"}) in [(n.name, dict(n.labels)) for n in c.namespaces()]
            Ctr(d.address)("content", "ingest", "x", input_bytes=b"data", namespace="ours")
            with pytest.raises(FailedPrecondition, match="must be empty"):
                c.delete_namespace("ours")
    finally:
        d.stop()
