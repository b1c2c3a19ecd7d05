from typing import Any

import pytest

from pycontainerd.errdefs import NotFound
from pycontainerd.plugin import InitContext, PluginSet, PluginType, Registration, graph


async def _noop(ic: InitContext[Any]) -> None:
    return None


def reg(type_: PluginType, id_: str, requires: Any = ()) -> Registration[Any, Any]:
    return Registration(type=type_, id=id_, init=_noop, requires=requires)


def test_graph_puts_requirements_first_and_keeps_registration_order() -> None:
    grpc_ns = reg(PluginType.GRPC, "namespaces", (PluginType.SERVICE,))
    svc = reg(PluginType.SERVICE, "namespaces-service", (PluginType.METADATA, PluginType.EVENT))
    meta = reg(PluginType.METADATA, "sqlite", (PluginType.CONTENT,))
    content = reg(PluginType.CONTENT, "content")
    events = reg(PluginType.EVENT, "exchange")
    version = reg(PluginType.GRPC, "version")
    order = [r.uri for r in graph([grpc_ns, version, svc, meta, content, events])]
    assert order == [
        content.uri,
        meta.uri,
        events.uri,
        svc.uri,
        grpc_ns.uri,
        version.uri,
    ]


def test_star_requires_everything_else() -> None:
    a = reg(PluginType.INTERNAL, "late", "*")
    b = reg(PluginType.GRPC, "x")
    c = reg(PluginType.EVENT, "y")
    assert [r.id for r in graph([a, b, c])] == ["x", "y", "late"]


def test_duplicate_and_cycles_are_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        graph([reg(PluginType.GRPC, "x"), reg(PluginType.GRPC, "x")])
    with pytest.raises(ValueError, match="cycle"):
        graph(
            [
                reg(PluginType.GRPC, "a", (PluginType.SERVICE,)),
                reg(PluginType.SERVICE, "b", (PluginType.GRPC,)),
            ]
        )


def test_plugin_set_get_reports_missing_and_failed() -> None:
    from pycontainerd.plugin import Meta, Plugin, SkipPlugin

    s = PluginSet()
    with pytest.raises(NotFound, match=r"no plugins registered for io\.containerd\.event\.v1"):
        s.get(PluginType.EVENT)
    skipped = Plugin(
        registration=reg(PluginType.SNAPSHOT, "btrfs"),
        meta=Meta(),
        config=None,
        error=SkipPlugin("not btrfs"),
    )
    s.add(skipped)
    with pytest.raises(SkipPlugin):
        s.get(PluginType.SNAPSHOT, "btrfs")
    assert str(skipped.error) == "not btrfs: skip plugin"
    assert s.get_by_type(PluginType.SNAPSHOT) == {}
