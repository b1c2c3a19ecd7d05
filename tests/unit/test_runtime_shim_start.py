"""A shim ``start`` that fails or hangs leaves nothing running (its session is killed)."""

from __future__ import annotations

import os
import select
import stat
from pathlib import Path

import pytest

from pycontainerd.errdefs import InvalidArgument, Unknown
from pycontainerd.runtime.v2 import binary as binarymod
from pycontainerd.runtime.v2.binary import ShimBinary

# a helper in the shim's session, as a forked server would be; its pid in <script>.helper
HELPER = 'sleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > "$0.helper"\n'


def _shim(tmp_path: Path, body: str) -> ShimBinary:
    script = tmp_path / "containerd-shim-odd-v1"
    script.write_text("#!/bin/sh\n" + HELPER + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    return ShimBinary(
        path=str(script),
        id="c1",
        namespace="ns1",
        bundle=bundle,
        address="/run/d.sock",
        ttrpc_address="/run/d.sock.ttrpc",
        publish_binary="/usr/bin/pycontainerd",
    )


def _assert_helper_gone(binary: ShimBinary) -> None:
    pid = int(Path(f"{binary.path}.helper").read_text())
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], 10)[0], f"helper {pid} survived"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        ("echo not-an-address\n", InvalidArgument, "printed 'not-an-address'"),
        ("echo broken >&2\nexit 4\n", Unknown, "broken: exit status 4"),
    ],
)
async def test_failed_start_kills_its_session(
    tmp_path: Path, body: str, kind: type[Exception], words: str
) -> None:
    binary = _shim(tmp_path, body)
    with pytest.raises(kind) as info:
        await binary.start(None)
    assert f"{binary.path} start: " in str(info.value) and words in str(info.value)
    _assert_helper_gone(binary)


async def test_hanging_start_times_out_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage, then no exit (containerd 1.6 would wait for ever)."""
    monkeypatch.setattr(binarymod, "START_TIMEOUT", 0.5)
    binary = _shim(tmp_path, "echo garbage\nexec sleep 1000\n")
    with pytest.raises(Unknown) as info:
        await binary.start(None)
    assert f"{binary.path} start: no address printed and no exit within 0.5s" in str(info.value)
    _assert_helper_gone(binary)
