"""Snapshotter plugins: ``io.containerd.snapshotter.v1.overlayfs`` and ``.native``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycontainerd.plugin import InitContext, PluginType, Registration
from pycontainerd.plugin.registry import Platform
from pycontainerd.snapshots.btrfs import BtrfsSnapshotter
from pycontainerd.snapshots.native import NativeSnapshotter
from pycontainerd.snapshots.overlay import OverlaySnapshotter


@dataclass(frozen=True, kw_only=True)
class OverlayConfig:
    root_path: str = ""
    upperdir_label: bool = False
    sync_remove: bool = False
    mount_options: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class NativeConfig:
    root_path: str = ""


def _root(ic: InitContext[Any], configured: str) -> Path:
    root = Path(configured) if configured else ic.root
    ic.meta.platforms.append(Platform("linux", "amd64"))
    ic.meta.exports["root"] = str(root)
    return root


async def _init_overlay(ic: InitContext[OverlayConfig]) -> OverlaySnapshotter:
    root = _root(ic, ic.config.root_path)
    return await OverlaySnapshotter.open(
        root,
        upperdir_label=ic.config.upperdir_label,
        sync_remove=ic.config.sync_remove,
        mount_options=tuple(ic.config.mount_options),
    )


async def _init_native(ic: InitContext[NativeConfig]) -> NativeSnapshotter:
    return await NativeSnapshotter.open(_root(ic, ic.config.root_path))


OVERLAYFS = Registration(
    type=PluginType.SNAPSHOT, id="overlayfs", init=_init_overlay, config=OverlayConfig()
)
NATIVE = Registration(
    type=PluginType.SNAPSHOT, id="native", init=_init_native, config=NativeConfig()
)


@dataclass(frozen=True, kw_only=True)
class BtrfsConfig:
    root_path: str = ""


async def _init_btrfs(ic: InitContext[BtrfsConfig]) -> BtrfsSnapshotter:
    # Raises SkipPlugin when the root is not on btrfs, as containerd's plugin does.
    return await BtrfsSnapshotter.open(_root(ic, ic.config.root_path))


BTRFS = Registration(type=PluginType.SNAPSHOT, id="btrfs", init=_init_btrfs, config=BtrfsConfig())
