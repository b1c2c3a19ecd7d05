"""Shim binary contract: names, start output and delete output parsing, commands."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd.errdefs import InvalidArgument, NotImplemented_, Unknown
from pycontainerd.runtime.v2.binary import (
    ShimAddress,
    ShimBinary,
    binary_name,
    parse_address,
    parse_delete_output,
)


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("io.containerd.runc.v2", "containerd-shim-runc-v2"),
        ("io.containerd.kata.v2", "containerd-shim-kata-v2"),
        ("runc.v1", "containerd-shim-runc-v1"),
        ("runc", ""),
        ("", ""),
    ],
)
def test_binary_name(runtime: str, expected: str) -> None:
    assert binary_name(runtime) == expected


def test_plain_address_as_containerd_1_6_prints_it() -> None:
    assert parse_address("unix:///run/containerd/s/abc\n") == ShimAddress("/run/containerd/s/abc")
    assert parse_address("/run/x.sock").path == "/run/x.sock"


def test_json_address() -> None:
    text = json.dumps({"version": 2, "address": "unix:///run/s.sock", "protocol": "ttrpc"})
    assert parse_address(text) == ShimAddress("/run/s.sock", "ttrpc", 2)


@pytest.mark.parametrize(
    "garbage",
    ["", "hello world", "Usage: shim [flags]", "unix://relative", "{not json", '{"version":2}'],
)
def test_garbage_is_a_clear_error(garbage: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_address(garbage)
    assert "shim" in str(info.value)


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 2, "address": "unix:///x", "protocol": "grpc"},
        {"version": 3, "address": "unix:///x", "protocol": "ttrpc"},
    ],
)
def test_unsupported_protocol_or_version(doc: dict[str, object]) -> None:
    with pytest.raises(NotImplemented_):
        parse_address(json.dumps(doc))


def test_delete_output() -> None:
    ts = timestamp_pb2.Timestamp(seconds=5, nanos=7)
    data = shim_pb2.DeleteResponse(pid=42, exit_status=137, exited_at=ts).SerializeToString()
    exit_ = parse_delete_output(data)
    assert (exit_.pid, exit_.status, exit_.timestamp_ns) == (42, 137, 5_000_000_007)
    assert parse_delete_output(b"").status == 0
    with pytest.raises(InvalidArgument):
        parse_delete_output(b"\xff\xff\xff")


def _fake_shim(tmp_path: Path, body: str) -> str:
    script = tmp_path / "containerd-shim-fake-v2"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _binary(tmp_path: Path, path: str) -> ShimBinary:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    return ShimBinary(
        path=path,
        id="c1",
        namespace="ns1",
        bundle=bundle,
        address="/run/d.sock",
        ttrpc_address="/run/d.sock.ttrpc",
        publish_binary="/usr/bin/pycontainerd",
    )


async def test_start_passes_flags_env_cwd_and_options(tmp_path: Path) -> None:
    record = tmp_path / "record"
    path = _fake_shim(
        tmp_path,
        f'echo "$@" > {record}\n'
        f'echo "$PWD $TTRPC_ADDRESS $GRPC_ADDRESS $MAX_SHIM_VERSION $NAMESPACE" >> {record}\n'
        f"cat > {record}.stdin\n"
        "echo unix:///run/shim.sock\n",
    )
    binary = _binary(tmp_path, path)
    options = any_pb2.Any(type_url="x/y", value=b"abc")
    address = await binary.start(options)
    assert address.path == "/run/shim.sock"
    argv, env = record.read_text().splitlines()
    assert (
        argv
        == "-namespace ns1 -address /run/d.sock -publish-binary /usr/bin/pycontainerd -id c1 start"
    )
    assert env == f"{binary.bundle} /run/d.sock.ttrpc /run/d.sock 2 ns1"
    assert any_pb2.Any.FromString(Path(f"{record}.stdin").read_bytes()) == options


async def test_start_failure_reports_output(tmp_path: Path) -> None:
    path = _fake_shim(tmp_path, 'echo "cannot do it" >&2\nexit 3\n')
    with pytest.raises(Unknown) as info:
        await _binary(tmp_path, path).start(None)
    assert "cannot do it" in str(info.value) and "exit status 3" in str(info.value)


async def test_start_garbage_names_the_binary(tmp_path: Path) -> None:
    path = _fake_shim(tmp_path, "echo surprise\n")
    with pytest.raises(InvalidArgument) as info:
        await _binary(tmp_path, path).start(None)
    assert path in str(info.value) and "surprise" in str(info.value)


async def test_delete_runs_with_bundle_flag(tmp_path: Path) -> None:
    record = tmp_path / "record"
    data = shim_pb2.DeleteResponse(pid=9, exit_status=1).SerializeToString()
    (tmp_path / "out").write_bytes(data)
    path = _fake_shim(tmp_path, f'echo "$@" > {record}\ncat {tmp_path / "out"}\n')
    binary = _binary(tmp_path, path)
    exit_ = await binary.delete()
    assert (exit_.pid, exit_.status) == (9, 1)
    assert record.read_text().split()[-5:] == ["-id", "c1", "-bundle", str(binary.bundle), "delete"]
    assert os.path.isdir(binary.bundle)
