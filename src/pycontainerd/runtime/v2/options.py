"""Default runc options for a runtime, from the daemon's config.

``[plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2".options]``
takes the runc ``Options`` fields by their Go names, as containerd's CRI runtime
config does (``BinaryName``, ``Root``, ``SystemdCgroup``, ``NoPivotRoot`` …; the
protobuf names such as ``binary_name`` work too). They are the defaults of every task
of that runtime: a field the container's (or the create request's) runc options set
wins, so ``ctr run --runc-binary`` still chooses for its container.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, descriptor, message

from pycontainerd._api.containerd.types.runc.options import oci_pb2
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.typeurl import marshal_any

RUNC_OPTIONS_TYPE = oci_pb2.Options.DESCRIPTOR.full_name

_SCALARS: dict[int, type] = {
    descriptor.FieldDescriptor.TYPE_BOOL: bool,
    descriptor.FieldDescriptor.TYPE_STRING: str,
    descriptor.FieldDescriptor.TYPE_UINT32: int,
    descriptor.FieldDescriptor.TYPE_INT32: int,
}


def _field_name(key: str) -> str:
    """``BinaryName`` -> ``binary_name``; ``IoUid`` -> ``io_uid``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()


def runc_options(table: Mapping[str, Any], where: str) -> any_pb2.Any:
    """The runc ``Options`` a config table describes, as an ``Any``.

    Raises:
        InvalidArgument: an unknown key or a value of the wrong type; the message names
            ``where`` (the table's config path) and the key.
    """
    options = oci_pb2.Options()
    fields = oci_pb2.Options.DESCRIPTOR.fields_by_name
    for key, value in table.items():
        field = fields.get(_field_name(key))
        kind = _SCALARS.get(field.type) if field is not None else None
        if field is None or kind is None:
            raise InvalidArgument(f"config {where}.{key}: unknown runc option")
        if type(value) is not kind or (isinstance(value, int) and value < 0):
            raise InvalidArgument(
                f"config {where}.{key}: expected a {kind.__name__}, got {value!r}"
            )
        setattr(options, field.name, value)
    return marshal_any(options)


def merge(default: any_pb2.Any | None, given: any_pb2.Any | None) -> any_pb2.Any | None:
    """The options a task starts with: ``given`` over the configured ``default``.

    Both runc options: field by field, what ``given`` sets wins. Otherwise ``given``
    when there is one (a shim with options of its own type knows them), else the
    default.

    Raises:
        InvalidArgument: ``given`` claims to be runc options but does not parse.
    """
    if default is None:
        return given
    if given is None:
        return default
    if given.type_url.rsplit("/", 1)[-1] != RUNC_OPTIONS_TYPE:
        return given
    merged = oci_pb2.Options.FromString(default.value)
    try:
        merged.MergeFrom(oci_pb2.Options.FromString(given.value))
    except message.DecodeError as exc:
        raise InvalidArgument(f"invalid runc options: {exc}") from exc
    return any_pb2.Any(type_url=given.type_url, value=merged.SerializeToString())
