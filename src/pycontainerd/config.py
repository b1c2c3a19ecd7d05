"""The daemon's configuration: containerd's ``config.toml``, version 2.

Decoding is strict: every table is decoded over a frozen dataclass of defaults, and a
key the dataclass does not have is an error that names its full path
(``grpc.adress``, ``plugins."io.containerd.gc.v1.scheduler".pause``). Plugins never read
files themselves; the server hands each its decoded section.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pycontainerd.errdefs import InvalidArgument

DEFAULT_ROOT = "/var/lib/pycontainerd"
DEFAULT_STATE = "/run/pycontainerd"
DEFAULT_ADDRESS = "/run/pycontainerd/containerd.sock"
DEFAULT_CONFIG_PATH = "/etc/pycontainerd/config.toml"
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
CONFIG_VERSION = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPCConfig:
    address: str = DEFAULT_ADDRESS
    tcp_address: str = ""
    tcp_tls_ca: str = ""
    tcp_tls_cert: str = ""
    tcp_tls_key: str = ""
    uid: int = 0
    gid: int = 0
    max_recv_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_send_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


@dataclasses.dataclass(frozen=True, kw_only=True)
class TTRPCConfig:
    address: str = ""
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DebugConfig:
    address: str = ""
    uid: int = 0
    gid: int = 0
    level: str = ""
    format: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    address: str = ""
    grpc_histogram: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class CgroupConfig:
    path: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProxyPlugin:
    type: str
    address: str
    platform: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The top level of config.toml. ``plugins`` holds raw tables, decoded per plugin."""

    version: int = CONFIG_VERSION
    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    temp: str = ""
    plugin_dir: str = ""
    disabled_plugins: list[str] = dataclasses.field(default_factory=list)
    required_plugins: list[str] = dataclasses.field(default_factory=list)
    oom_score: int = 0
    imports: list[str] = dataclasses.field(default_factory=list)
    grpc: GRPCConfig = dataclasses.field(default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = dataclasses.field(default_factory=TTRPCConfig)
    debug: DebugConfig = dataclasses.field(default_factory=DebugConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    cgroup: CgroupConfig = dataclasses.field(default_factory=CgroupConfig)
    timeouts: dict[str, str] = dataclasses.field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    proxy_plugins: dict[str, ProxyPlugin] = dataclasses.field(default_factory=dict)
    stream_processors: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# Keys we parse for compatibility with containerd's files but whose features this
# daemon does not have; a non-default value is refused rather than silently ignored.
_UNSUPPORTED = {
    "grpc.tcp_address": "serving gRPC over TCP",
    "plugin_dir": "loading Go plugins",
    "imports": "importing other config files",
    "stream_processors": "stream processors",
}

D = TypeVar("D")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _decode_value(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"config {path}: expected a table")
        return decode(tp, value, path)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _decode_value(args[0], value, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise InvalidArgument(f"config {path}: expected an array")
        return [_decode_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"config {path}: expected a table")
        return {k: _decode_value(item, v, f'{path}."{k}"') for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(f"config {path}: expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"config {path}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"config {path}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InvalidArgument(f"config {path}: expected a string")
        return value
    raise TypeError(f"config field {path} has unsupported type {_type_name(tp)}")


def decode(cls: type[D], table: Mapping[str, Any], path: str = "") -> D:
    """Decode a TOML table over the defaults of dataclass ``cls``.

    Raises:
        InvalidArgument: an unknown key or a value of the wrong type, naming its path.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise InvalidArgument(f"config {where}: unknown key")
        kwargs[key] = _decode_value(hints[key], value, where)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise InvalidArgument(f"config {path or '<top>'}: {exc}") from exc


def _check_supported(cfg: Config) -> None:
    defaults = Config()
    for path, what in _UNSUPPORTED.items():
        value: Any = cfg
        default: Any = defaults
        for part in path.split("."):
            value = getattr(value, part)
            default = getattr(default, part)
        if value != default:
            raise InvalidArgument(f"config {path}: {what} is not supported by pycontainerd")


def parse(text: str, source: str = "config") -> Config:
    """Parse config.toml text.

    Raises:
        InvalidArgument: malformed TOML, a version other than 2, an unknown key, a wrong
        type, or a feature this daemon does not have.
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{source}: {exc}") from exc
    version = table.get("version", 1)
    if version != CONFIG_VERSION:
        raise InvalidArgument(
            f"{source}: unsupported config version {version!r}: "
            f"pycontainerd reads version {CONFIG_VERSION} (containerd 1.x format)"
        )
    cfg = decode(Config, table)
    _check_supported(cfg)
    return cfg


def load(path: Path) -> Config:
    """Read and parse a config file (see ``parse``); a missing file is an error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"config {path}: {exc.strerror}") from exc
    return parse(text, str(path))


def to_table(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists, for printing as TOML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_table(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_table(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_table(v) for v in obj]
    return obj


# -- TOML output ------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_string(key)


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(table: Mapping[str, Any]) -> str:
    """Write a table as TOML in containerd's style: scalars first, then sub-tables."""
    lines: list[str] = []

    def emit(tbl: Mapping[str, Any], prefix: list[str], depth: int) -> None:
        indent = "  " * depth
        for k in sorted(tbl):
            v = tbl[k]
            if not isinstance(v, dict):
                lines.append(f"{indent}{_toml_key(k)} = {_toml_value(v)}")
        for k in sorted(tbl):
            v = tbl[k]
            if isinstance(v, dict):
                name = [*prefix, _toml_key(k)]
                lines.append("")
                lines.append(f"{indent}[{'.'.join(name)}]")
                emit(v, name, depth + 1)

    emit(table, [], 0)
    return "\n".join(lines).lstrip("\n") + "\n"
