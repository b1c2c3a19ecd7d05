"""Command-line flags and socket addresses of the shim; standard library only, because
the ``start`` path that containerd waits on must stay small (no dataclasses, json or
pathlib: each costs milliseconds of import on every container start)."""

from __future__ import annotations

import os

# hashlib loads OpenSSL (~8 ms); the builtin SHA-256 is the same function without it.
try:
    from _sha2 import sha256  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment, unused-ignore]


def sha256_hex(data: bytes) -> str:
    return str(sha256(data).hexdigest())


# containerd 1.6 hard-codes where shim sockets live (runtime/v2/shim/util_unix.go).
CONTAINERD_STATE = "/run/containerd"
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
UNIX_PREFIX = "unix://"
ADDRESS_FILE = "address"  # in the bundle: where its shim serves


class Flags:
    """The flags containerd passes to every shim invocation, Go ``flag`` style."""

    __slots__ = ("action", "address", "bundle", "debug", "id", "namespace", "publish_binary")

    def __init__(
        self,
        namespace: str = "",
        address: str = "",
        publish_binary: str = "",
        id: str = "",
        bundle: str = "",
        debug: bool = False,
        action: str = "",
    ) -> None:
        self.namespace = namespace
        self.address = address
        self.publish_binary = publish_binary
        self.id = id
        self.bundle = bundle
        self.debug = debug
        self.action = action


_STRING_FLAGS = {
    "namespace": "namespace",
    "address": "address",
    "publish-binary": "publish_binary",
    "id": "id",
    "bundle": "bundle",
    "socket": "",  # older daemons pass it; the address is recomputed
}


def parse_flags(argv: list[str]) -> Flags:
    """Parses ``-flag value``, ``--flag=value`` and the bool ``-debug``; the first
    non-flag word is the action (``start``, ``delete``). Raises ValueError."""
    values: dict[str, str] = {}
    debug = False
    action = ""
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word in ("-", "--"):
            action = word
            break
        name, eq, value = word.lstrip("-").partition("=")
        if name in ("debug", "v"):
            debug = debug or name == "debug"
            continue
        if name not in _STRING_FLAGS:
            raise ValueError(f"flag provided but not defined: -{name}")
        if not eq:
            if i >= len(argv):
                raise ValueError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if _STRING_FLAGS[name]:
            values[_STRING_FLAGS[name]] = value
    return Flags(debug=debug, action=action, **values)


def state_root(bundle: str, max_shim_version: str | None) -> str:
    """The directory whose ``s/`` holds shim sockets: the one rule for both daemons.

    Debian's containerd 1.6 hard-codes ``/run/containerd`` and does not set
    ``MAX_SHIM_VERSION``; so that is the answer without it. Our daemon sets it, and
    bundles are ``<state>/io.containerd.runtime.v2.task/<ns>/<id>``: its sockets go in
    ``<state>/s`` so daemons with separate state never share one. ``/run/containerd``
    remains the answer when the bundle is not laid out like that or the socket path
    would not fit in ``sun_path`` (108 bytes).
    """
    if not max_shim_version:
        return CONTAINERD_STATE
    namespace_dir = os.path.dirname(os.path.abspath(bundle))
    tasks_dir = os.path.dirname(namespace_dir)
    state = os.path.dirname(tasks_dir)
    if os.path.basename(tasks_dir) != "io.containerd.runtime.v2.task" or state == tasks_dir:
        return CONTAINERD_STATE
    if len(state) + len("/s/") + 64 >= _SUN_PATH_MAX:
        return CONTAINERD_STATE
    return state


_SUN_PATH_MAX = 108


def socket_address(containerd_address: str, namespace: str, group_id: str, root: str) -> str:
    """``unix://<root>/s/<sha256(address/ns/group)>``, as containerd's runc v2 shim."""
    key = os.path.join(containerd_address, namespace, group_id)
    return f"{UNIX_PREFIX}{root}/s/{sha256_hex(key.encode())}"


def socket_alive(path: str) -> bool:
    """A server accepts connections at ``path``."""
    from _socket import AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM
    from _socket import socket as RawSocket

    probe = RawSocket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def socket_path(address: str) -> str:
    """The filesystem path of a ``unix://`` address."""
    return address[len(UNIX_PREFIX) :] if address.startswith(UNIX_PREFIX) else address


def group_annotation(bundle: str) -> str:
    """The shim group a container's spec names (a pod's sandbox container names its own
    id), or "" for none: the container's own id is then its group."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            data = f.read()
    except OSError:
        return ""
    if not any(key.encode() in data for key in GROUP_ANNOTATIONS):
        return ""  # the common case: no need to parse (or import json)
    import json

    try:
        spec = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(spec, dict):
        return ""
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict):
        return ""
    for key in GROUP_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return ""
