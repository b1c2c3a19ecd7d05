"""The runtime v2 plugin's configuration and the programs it hands to shims."""

from __future__ import annotations

import os
import sys

import pytest

from pycontainerd import config as configmod
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.runtime.v2 import plugin


def test_default_maps_runc_v2_to_our_shim() -> None:
    cfg = plugin.RuntimeV2Config()
    assert cfg.runtimes == {
        "io.containerd.runc.v2": plugin.RuntimeBinary(binary="containerd-shim-pyrunc-v2")
    }
    assert cfg.platforms == ["linux/amd64"]


def test_runtimes_table_replaces_the_default() -> None:
    table = {"runtimes": {"io.containerd.runc.v2": {"binary": "/usr/bin/containerd-shim-runc-v2"}}}
    cfg = configmod.decode(plugin.RuntimeV2Config, table, 'plugins."io.containerd.runtime.v2.task"')
    assert cfg.runtimes == {
        "io.containerd.runc.v2": plugin.RuntimeBinary(binary="/usr/bin/containerd-shim-runc-v2")
    }


def test_unknown_runtime_key_names_its_path() -> None:
    table = {"runtimes": {"io.containerd.runc.v2": {"path": "/x"}}}
    with pytest.raises(InvalidArgument, match=r'runtimes\."io.containerd.runc.v2"\.path'):
        configmod.decode(plugin.RuntimeV2Config, table, "p")


def test_config_round_trips_through_toml() -> None:
    text = configmod.dumps(
        {"plugins": {plugin.REGISTRATION.uri: configmod.to_table(plugin.RuntimeV2Config())}}
    )
    parsed = configmod.parse("version = 2\n" + text)
    table = parsed.plugins[plugin.REGISTRATION.uri]
    assert configmod.decode(plugin.RuntimeV2Config, table) == plugin.RuntimeV2Config()


def test_publish_binary_is_our_daemon() -> None:
    found = plugin.publish_binary()
    beside = os.path.join(os.path.dirname(sys.executable), "pycontainerd")
    assert found == beside if os.path.exists(beside) else os.path.isabs(found)
