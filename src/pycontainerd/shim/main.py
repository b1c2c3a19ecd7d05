"""``containerd-shim-pyrunc-v2``: the ``start`` and ``delete`` commands and the server.

``start`` binds the shim socket, forks the server (no new interpreter, no heavy import
before the fork) and prints the address once it is listening: connections made before
the server's loop runs wait in the listen backlog.
"""

from __future__ import annotations

import errno
import os
import sys

# socket.py costs ~10 ms of imports (enum, selectors) on every container start; the
# start command needs only the C module's bind, listen and connect.
from _socket import AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM
from _socket import socket as RawSocket

from pycontainerd.shim.address import (
    ADDRESS_FILE,
    Flags,
    group_annotation,
    parse_flags,
    socket_address,
    socket_alive,
    socket_path,
    state_root,
)

TYPE_CHECKING = False  # typing itself costs milliseconds to import
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    # spawn(listener, flags, bundle, address, command line, env, pool) -> (the server's
    # pid, its address): with ``pool`` > 1 the server may be a running one that serves
    # fewer than ``pool`` containers, at its own address.
    Spawn = Callable[
        [RawSocket, Flags, str, str, list[str], Mapping[str, str], int], tuple[int, str]
    ]

SHIM_VERSION = 2
# How many ungrouped containers one shim process serves at most (the fork server puts
# them together); 1 gives every container its own shim, as containerd's runc shim does.
CONTAINERS_PER_SHIM_ENV = "PYRUNC_SHIM_CONTAINERS"
CONTAINERS_PER_SHIM = 8
# Set by the zygote when it runs ``start`` in a child: descriptors a server forked
# here must close.
CLOSE_IN_SERVER: list[int] = []


def main(argv: list[str] | None = None) -> None:
    try:
        flags = parse_flags(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if not flags.namespace:
        flags.namespace = os.environ.get("NAMESPACE", "")
    if not flags.namespace:
        print("shim namespace cannot be empty", file=sys.stderr)
        sys.exit(1)
    if flags.action == "start":
        code = start(flags, sys.argv if argv is None else [sys.argv[0], *argv])
        if argv is None:
            # The daemon waits for us to exit: skip the interpreter's orderly teardown.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)
    if flags.action == "delete":
        sys.exit(delete(flags))
    print(f"unknown shim command {flags.action!r}", file=sys.stderr)
    sys.exit(2)


def _bundle(flags: Flags) -> str:
    return flags.bundle or os.getcwd()


def start(flags: Flags, argv: list[str]) -> int:
    code, out, err = start_shim(flags, argv, os.environ, os.getcwd(), _fork_server)
    if err:
        print(err, file=sys.stderr)
    sys.stdout.write(out)
    sys.stdout.flush()
    return code


def start_shim(
    flags: Flags,
    argv: list[str],
    env: Mapping[str, str],
    cwd: str,
    spawn: Spawn,
) -> tuple[int, str, str]:
    """The ``start`` command as if run with ``env`` in ``cwd``: bind the group's socket
    (or find its live server), have ``spawn`` fork a server onto it, and return (exit
    status, what to print, an error). The zygote runs it in its own process."""
    bundle = os.path.join(cwd, flags.bundle) if flags.bundle else cwd
    bundle = os.path.abspath(bundle)
    version = env.get("MAX_SHIM_VERSION")
    root = state_root(bundle, version)
    group = group_annotation(bundle)
    address = socket_address(flags.address, flags.namespace, group or flags.id, root)
    # A pod's group has its own shim; other containers may share a pooled one.
    pool = 0 if group else containers_per_shim(env)
    try:
        listener = _listen(socket_path(address))
    except OSError as exc:
        return 1, "", f"create shim socket {address}: {exc}"
    if listener is not None:
        try:
            # The server's command line is ours without the action word, as Go shims show.
            cmdline = list(argv)
            if flags.action in cmdline:
                del cmdline[len(cmdline) - 1 - cmdline[::-1].index(flags.action)]
            pid, served = spawn(listener, flags, bundle, address, cmdline, env, pool)
        finally:
            listener.close()
        if served != address:  # a pooled shim takes the container: ours is not needed
            os.unlink(socket_path(address))
            address = served
        _write(os.path.join(bundle, "shim.pid"), str(pid))
    _write(os.path.join(bundle, ADDRESS_FILE), address)
    return 0, address_output(address, version), ""


def containers_per_shim(env: Mapping[str, str]) -> int:
    value = env.get(CONTAINERS_PER_SHIM_ENV, "")
    return int(value) if value.isdigit() else CONTAINERS_PER_SHIM


def _fork_server(
    listener: RawSocket,
    flags: Flags,
    bundle: str,
    address: str,
    cmdline: list[str],
    env: Mapping[str, str],
    pool: int,
) -> tuple[int, str]:
    """The server's pid and address: from the warm zygote when there is one (which may
    place the container in a pooled shim), else forked by us."""
    from pycontainerd.shim import zygote

    if zygote.enabled():
        request = zygote.Request(flags, address, bundle, cmdline, dict(env), pool=pool)
        root = state_root(bundle, env.get("MAX_SHIM_VERSION"))
        served = zygote.fork_server(listener, request, root)
        if served is not None:
            return served
    pid = os.fork()
    if pid == 0:
        become_server(listener.fileno(), flags, bundle, address)  # never returns
    return pid, address


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def address_output(address: str, max_shim_version: str | None) -> str:
    """What ``start`` prints: JSON for a daemon that announced shim protocol 2+, else
    the plain address (containerd 1.6)."""
    version = max_shim_version or ""
    if not (version.isdigit() and int(version) >= SHIM_VERSION):
        return address
    out = _json_string_safe(address) and (
        f'{{"version": {SHIM_VERSION}, "address": "{address}", "protocol": "ttrpc"}}'
    )
    if not out:  # unusual characters: let json escape them
        import json

        out = json.dumps({"version": SHIM_VERSION, "address": address, "protocol": "ttrpc"})
    return out


def _json_string_safe(text: str) -> bool:
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _listen(path: str) -> RawSocket | None:
    """A listening socket at ``path``, or None when a live shim of the group has it."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = RawSocket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if socket_alive(path):
                return None
            os.unlink(path)
            continue
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"{path} is in use")


def become_server(
    listener_fd: int, flags: Flags, bundle: str, address: str, pool_fd: int | None = None
) -> None:
    """The forked child: new session, stdio off containerd's pipes, then serve on the
    listening socket ``listener_fd`` (and the fork server's pool requests on
    ``pool_fd``)."""
    code = 1
    try:
        for fd in CLOSE_IN_SERVER:
            os.close(fd)
        import socket

        listener = socket.socket(fileno=listener_fd)
        pool_channel = None if pool_fd is None else socket.socket(fileno=pool_fd)
        os.setsid()
        redirect_stdio(bundle)
        # asyncio imports ssl only if it can; the shim speaks ttrpc over unix sockets,
        # and OpenSSL's initialisation costs about 1 MiB per container.
        if "ssl" not in sys.modules:
            sys.modules["ssl"] = None  # type: ignore[assignment]
        from pycontainerd.shim.server import serve

        code = serve(listener, flags, address, pool_channel)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def redirect_stdio(bundle: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        # containerd reads the bundle's ``log`` FIFO; without a reader, /dev/null.
        log = os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK)
        os.set_blocking(log, True)
    except OSError:
        log = null
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in {null, log}:
        if fd > 2:
            os.close(fd)


def delete(flags: Flags) -> int:
    from pycontainerd.shim.cleanup import delete as clean_up

    return clean_up(flags, _bundle(flags))
