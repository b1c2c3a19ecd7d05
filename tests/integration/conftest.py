"""Integration fixtures: real daemons in temporary roots, driven by Debian's Go ``ctr``.

Each test gets its own pycontainerd (own root, state and socket) that is stopped, and
killed if it will not stop, even when the test fails. The reference containerd runs in
a private mount namespace with a tmpfs over /run/containerd, because containerd 1.6
hard-codes that path for shims and runc state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycontainerd import harness

CTR = shutil.which("ctr")
CONTAINERD = shutil.which("containerd")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _requires_root_and_ctr() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    if CTR is None:
        pytest.skip("Debian's Go ctr (package containerd) is not installed")


@dataclass
class CtrResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Ctr:
    """Debian's Go ctr pointed at one daemon's socket."""

    address: Path

    def __call__(
        self,
        *args: str,
        namespace: str | None = None,
        input_bytes: bytes | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> CtrResult:
        cmd = [str(CTR), "--address", str(self.address)]
        if namespace is not None:
            cmd += ["--namespace", namespace]
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, input=input_bytes, timeout=timeout
        )
        result = CtrResult(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} failed ({proc.returncode}):\n{result.stderr}"
            )
        return result


# Collections only when a test asks for one (a sync delete): a collection at start-up
# or after 100 changes would race with tests that make unreferenced objects, as it
# would with containerd.
TEST_CONFIG = """version = 2
[plugins."io.containerd.gc.v1.scheduler"]
startup_delay = "24h"
mutation_threshold = 1000000
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[harness.Daemon]:
    config = tmp_path / "test-config.toml"
    config.write_text(TEST_CONFIG)
    with harness.pycontainerd(tmp_path, "--config", str(config)) as d:
        yield d


@pytest.fixture
def ctr(daemon: harness.Daemon) -> Ctr:
    return Ctr(daemon.address)


def start_reference_containerd(base: Path) -> harness.Daemon:
    """Debian's containerd in a private mount namespace, under ``base``."""
    if CONTAINERD is None:
        pytest.skip("Debian's containerd is not installed")
    Path("/run/containerd").mkdir(exist_ok=True)
    root, state, address = base / "root", base / "state", base / "c.sock"
    config = base / "config.toml"
    # Only what the comparison needs; CRI would want more of this machine.
    config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    argv = [
        CONTAINERD,
        "--config",
        str(config),
        "--root",
        str(root),
        "--state",
        str(state),
        "--address",
        str(address),
    ]
    wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs /run/containerd && exec "$@"',
        "containerd",
    ]
    return harness.start(
        argv,
        address=address,
        root=root,
        state=state,
        log_path=base / "containerd.log",
        preexec=wrapper,
    )


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[Ctr]:
    base = tmp_path / "reference"
    base.mkdir()
    d = start_reference_containerd(base)
    try:
        yield Ctr(d.address)
    finally:
        d.stop()
