"""Registry hosts: containerd's ``certs.d/<host>/hosts.toml`` and the defaults.

A host directory holds ``hosts.toml``::

    server = "https://registry.example.com"      # the upstream (default: https://<host>)
    [host."https://mirror.local:5000"]
      capabilities = ["pull", "resolve"]         # default: pull, resolve, push
      skip_verify = false
      ca = "/etc/certs/mirror.crt"               # path or list of paths
      client = [["/c.crt", "/c.key"]]            # cert, [cert, key], or a list of them
      override_path = false
      [host."https://mirror.local:5000".header]
        x-custom = "1"

Mirrors are tried in file order, then the server. Relative paths resolve against the
host directory. Parsing is sans-I/O (``parse_hosts_toml``); ``load_hosts`` reads files.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycontainerd.errdefs import InvalidArgument

CAP_PULL = "pull"
CAP_RESOLVE = "resolve"
CAP_PUSH = "push"
ALL_CAPABILITIES = frozenset({CAP_PULL, CAP_RESOLVE, CAP_PUSH})
DOCKER_HUB_HOST = "registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class RegistryHost:
    """One endpoint to talk to: ``scheme://host`` + ``path`` (``/v2`` unless overridden)."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def _is_local(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("localhost", "127.0.0.1", "[::1]", "::1")


def default_host(registry: str, *, plain_http: bool = False) -> RegistryHost:
    """containerd's default: docker.io goes to registry-1.docker.io; HTTPS unless asked."""
    host = DOCKER_HUB_HOST if registry == "docker.io" else registry
    return RegistryHost("http" if plain_http else "https", host)


def _url_host(url: str, where: str) -> tuple[str, str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise InvalidArgument(f"{where}: {url!r} must start with http:// or https://")
    host, _, path = rest.partition("/")
    if not host:
        raise InvalidArgument(f"{where}: {url!r} has no host")
    return scheme, host, ("/" + path).rstrip("/") if path else ""


def _paths(value: Any, base: Path | None, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidArgument(f"{where}: expected a path or a list of paths")
    return tuple(
        str(base / i) if base is not None and not Path(i).is_absolute() else i for i in items
    )


def _client_certs(value: Any, base: Path | None, where: str) -> tuple[tuple[str, str], ...]:
    # containerd accepts "cert", ["cert", "key"], or [["cert", "key"], "cert2", ...].
    if isinstance(value, str):
        entries: list[Any] = [value]
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        entries = [value]
    elif isinstance(value, list):
        entries = value
    else:
        raise InvalidArgument(f"{where}: client must be a path, a pair or a list")
    out: list[tuple[str, str]] = []
    for entry in entries:
        if isinstance(entry, str):
            (cert,) = _paths(entry, base, where)
            out.append((cert, ""))
        elif isinstance(entry, list) and len(entry) == 2:
            cert, key = _paths(entry, base, where)
            out.append((cert, key))
        else:
            raise InvalidArgument(f"{where}: client entry {entry!r} is not cert or [cert, key]")
    return tuple(out)


def _host_from_table(
    url: str, table: Mapping[str, Any], base: Path | None, where: str, plain_http: bool
) -> RegistryHost:
    scheme, host, path = _url_host(url, where)
    known = {"capabilities", "skip_verify", "ca", "client", "override_path", "header"}
    unknown = set(table) - known
    if unknown:
        raise InvalidArgument(f"{where}: unknown keys {sorted(unknown)}")
    caps = table.get("capabilities", sorted(ALL_CAPABILITIES))
    if not isinstance(caps, list) or not set(caps) <= ALL_CAPABILITIES:
        raise InvalidArgument(f"{where}: capabilities must be a list of pull, resolve, push")
    if not table.get("override_path") and not path.endswith("/v2"):
        path += "/v2"
    headers = table.get("header", {})
    if not isinstance(headers, Mapping):
        raise InvalidArgument(f"{where}: header must be a table")
    if plain_http and scheme == "https" and _is_local(host):
        scheme = "http"
    return RegistryHost(
        scheme=scheme,
        host=host,
        path=path,
        capabilities=frozenset(caps),
        skip_verify=bool(table.get("skip_verify", False)),
        ca=_paths(table["ca"], base, where + ".ca") if "ca" in table else (),
        client_certs=(
            _client_certs(table["client"], base, where + ".client") if "client" in table else ()
        ),
        headers={str(k): str(v) for k, v in headers.items()},
    )


def parse_hosts_toml(
    text: str, registry: str, *, base: Path | None = None, plain_http: bool = False
) -> list[RegistryHost]:
    """The hosts for ``registry`` described by one ``hosts.toml``: mirrors, then server.

    Raises:
        InvalidArgument: not TOML, an unknown key, a bad URL or capability.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"hosts.toml for {registry}: {exc}") from None
    out: list[RegistryHost] = []
    mirrors = doc.get("host", {})
    if not isinstance(mirrors, Mapping):
        raise InvalidArgument(f"hosts.toml for {registry}: [host] must be a table")
    for url, table in mirrors.items():
        if not isinstance(table, Mapping):
            raise InvalidArgument(f"hosts.toml for {registry}: host {url!r} must be a table")
        out.append(_host_from_table(url, table, base, f"host.{url!r}", plain_http))
    server = doc.get("server")
    top = {k: v for k, v in doc.items() if k not in ("server", "host")}
    if server is not None:
        if not isinstance(server, str):
            raise InvalidArgument(f"hosts.toml for {registry}: server must be a URL")
        out.append(_host_from_table(server, top, base, "server", plain_http))
    else:
        default = default_host(registry, plain_http=plain_http)
        out.append(
            _host_from_table(default.base_url.removesuffix("/v2"), top, base, "server", plain_http)
        )
    return out


def host_dir_names(registry: str) -> Sequence[str]:
    """Directory names tried under ``certs.d``: the host (``:`` kept), then ``_default``."""
    return (registry, "_default")


def load_hosts(
    registry: str, hosts_dir: str | Path | None = None, *, plain_http: bool = False
) -> list[RegistryHost]:
    """The hosts for ``registry``: from ``hosts_dir/<registry>/hosts.toml`` if present.

    Raises:
        InvalidArgument: a hosts.toml that does not parse.
    """
    if hosts_dir is not None:
        for name in host_dir_names(registry):
            directory = Path(hosts_dir) / name
            path = directory / "hosts.toml"
            if path.is_file():
                return parse_hosts_toml(
                    path.read_text(), registry, base=directory, plain_http=plain_http
                )
    return [default_host(registry, plain_http=plain_http)]
