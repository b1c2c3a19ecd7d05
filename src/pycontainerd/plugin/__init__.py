"""The plugin model: every part of the daemon registers as a typed plugin."""

from pycontainerd.plugin.registry import (
    InitContext,
    Meta,
    Plugin,
    PluginSet,
    PluginType,
    Registration,
    SkipPlugin,
    graph,
)

__all__ = [
    "InitContext",
    "Meta",
    "Plugin",
    "PluginSet",
    "PluginType",
    "Registration",
    "SkipPlugin",
    "graph",
]
