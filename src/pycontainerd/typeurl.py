"""Type URLs for ``google.protobuf.Any`` values as containerd writes them.

containerd's typeurl package names a protobuf message by its full name with no
``type.googleapis.com/`` prefix (``containerd.events.NamespaceCreate``); we write the same
and read either form.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from google.protobuf import any_pb2, descriptor_pool, message, message_factory

from pycontainerd.errdefs import NotFound


def type_url(msg: message.Message) -> str:
    return msg.DESCRIPTOR.full_name


def marshal_any(msg: message.Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url(msg), value=msg.SerializeToString())


def unmarshal_any(value: any_pb2.Any) -> message.Message:
    """Decode an Any whose type is in the default descriptor pool.

    Raises:
        NotFound: the type is not known to this process.
        google.protobuf.message.DecodeError: the bytes do not parse as that type.
    """
    name = value.type_url.rsplit("/", 1)[-1]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        _import_event_types()
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError as exc:
            raise NotFound(f"type {value.type_url}") from exc
    msg = message_factory.GetMessageClass(desc)()
    msg.ParseFromString(value.value)
    return msg


@functools.cache
def _import_event_types() -> None:
    """Load containerd's event messages into the pool (a client may not have yet)."""
    import pycontainerd._api.containerd.events as events_pkg

    for mod in pkgutil.iter_modules(events_pkg.__path__):
        if mod.name.endswith("_pb2"):
            importlib.import_module(f"{events_pkg.__name__}.{mod.name}")


def field_value(msg: message.Message, path: tuple[str, ...]) -> tuple[str, bool]:
    """A filter adaptor over any message: strings by field name, map entries by key.

    This is what containerd's generated ``Field`` methods do for event payloads.
    """
    current: object = msg
    for i, part in enumerate(path):
        if isinstance(current, message.Message):
            fd = current.DESCRIPTOR.fields_by_name.get(part)
            if fd is None:
                return "", False
            value = getattr(current, part)
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                rest = path[i + 1 :]
                if len(rest) != 1:
                    return "", False
                key = rest[0]
                if key in value:
                    v = value[key]
                    return (v, True) if isinstance(v, str) else (str(v), True)
                return "", False
            current = value
            continue
        return "", False
    if isinstance(current, str):
        return current, bool(current)
    if isinstance(current, bool):
        return ("true" if current else "false"), True
    if isinstance(current, int):
        return str(current), True
    return "", False
