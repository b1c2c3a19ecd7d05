"""``pycontainerd``: the daemon, its ``config`` subcommands, and ``snapshotter serve``
(one snapshotter over the Snapshots API, for another daemon's ``[proxy_plugins]``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from pycontainerd import __version__, builtins, log
from pycontainerd import config as configmod
from pycontainerd.errdefs import ContainerdError
from pycontainerd.runtime.v2 import publish as publish_cmd
from pycontainerd.server.server import Server, check_socket
from pycontainerd.snapshots import serve as snapshot_serve
from pycontainerd.snapshots.interface import Snapshotter
from pycontainerd.snapshots.native import NativeSnapshotter
from pycontainerd.snapshots.overlay import OverlaySnapshotter

logger = logging.getLogger("pycontainerd")


def default_config_table() -> dict[str, object]:
    """The full default config, plugin sections included."""
    table: dict[str, object] = configmod.to_table(configmod.Config())
    plugins: dict[str, object] = {}
    for reg in builtins.registrations():
        if reg.config is not None and dataclasses.fields(reg.config):
            plugins[reg.uri] = configmod.to_table(reg.config)
    table["plugins"] = plugins
    return table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pycontainerd",
        description="containerd, rebuilt in Python: a container runtime daemon.",
    )
    p.add_argument("--version", "-v", action="version", version=f"pycontainerd {__version__}")
    p.add_argument(
        "--config", "-c", help=f"path to config.toml (default {configmod.DEFAULT_CONFIG_PATH})"
    )
    p.add_argument("--root", help="directory for persistent data")
    p.add_argument("--state", help="directory for runtime state")
    p.add_argument("--address", "-a", help="unix socket the gRPC API listens on")
    p.add_argument("--log-level", "-l", help="trace, debug, info, warn, error, fatal, panic")
    p.add_argument("--log-format", help="text or json")
    sub = p.add_subparsers(dest="command")
    publish_cmd.add_parser(sub)
    cfg = sub.add_parser("config", help="show the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("default", help="print the full default configuration")
    cfg_sub.add_parser("dump", help="print the configuration after the file and flags apply")
    sn = sub.add_parser("snapshotter", help="run a snapshotter on its own")
    sn_sub = sn.add_subparsers(dest="snapshotter_command", required=True)
    serve_p = sn_sub.add_parser(
        "serve",
        help="serve a snapshotter over the Snapshots gRPC API (for [proxy_plugins])",
        description="Serve one snapshotter on a unix socket until SIGTERM or SIGINT.",
    )
    # Own dests: the top-level --root/--address are the daemon's and keep their meaning.
    serve_p.add_argument(
        "--snapshotter", required=True, choices=SERVABLE, help="the backend to serve"
    )
    serve_p.add_argument(
        "--root",
        dest="snapshotter_root",
        metavar="DIR",
        required=True,
        help="the snapshotter's directory",
    )
    serve_p.add_argument(
        "--address",
        dest="snapshotter_address",
        metavar="SOCK",
        required=True,
        help="unix socket to serve on (a stale one is replaced)",
    )
    return p


def load_config(args: argparse.Namespace) -> configmod.Config:
    """The file (if given, or the default path if it exists) overridden by flags."""
    if args.config:
        cfg = configmod.load(Path(args.config))
    elif Path(configmod.DEFAULT_CONFIG_PATH).exists():
        cfg = configmod.load(Path(configmod.DEFAULT_CONFIG_PATH))
    else:
        cfg = configmod.Config()
    if args.root:
        cfg = dataclasses.replace(cfg, root=args.root)
    if args.state:
        cfg = dataclasses.replace(cfg, state=args.state)
    if args.address:
        cfg = dataclasses.replace(cfg, grpc=dataclasses.replace(cfg.grpc, address=args.address))
    if args.log_level or args.log_format:
        debug = dataclasses.replace(
            cfg.debug,
            level=args.log_level or cfg.debug.level,
            format=args.log_format or cfg.debug.format,
        )
        cfg = dataclasses.replace(cfg, debug=debug)
    for name in ("root", "state"):
        if not Path(getattr(cfg, name)).is_absolute():
            raise ContainerdError(f"{name} path must be absolute: {getattr(cfg, name)!r}")
    return cfg


async def serve(cfg: configmod.Config) -> None:
    server = Server(cfg, builtins.registrations())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    logger.info("pycontainerd %s successfully booted", __version__)
    sd_notify("READY=1")
    await stop.wait()
    logger.info("stopping on signal")
    sd_notify("STOPPING=1")
    await server.stop()


SERVABLE = ("overlayfs", "native")


async def _open_backend(kind: str, root: Path) -> Snapshotter:
    """Raises SkipPlugin when overlayfs cannot work here (as its plugin would)."""
    if kind == "overlayfs":
        return await OverlaySnapshotter.open(root)
    return await NativeSnapshotter.open(root)


async def serve_snapshotter(kind: str, root: Path, address: Path) -> None:
    """Serve one backend on ``address`` until SIGTERM/SIGINT, then remove the socket.

    READY=1 goes to ``NOTIFY_SOCKET`` once the socket answers, as the daemon does.

    Raises:
        FailedPrecondition: something else serves on ``address``, or it is not a socket.
        SkipPlugin: overlayfs is not usable on this host.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    check_socket(address)
    backend = await _open_backend(kind, root)
    try:
        server = await snapshot_serve.serve(backend, address)
        try:
            logger.info("serving snapshotter %s (root %s) on %s", kind, root, address)
            sd_notify("READY=1")
            await stop.wait()
            logger.info("stopping on signal")
            sd_notify("STOPPING=1")
        finally:
            await snapshot_serve.stop(server, address)
    finally:
        await backend.aclose()


def sd_notify(state: str) -> None:
    """Tell a supervisor (systemd ``Type=notify``, or a test) how start-up went."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            logger.warning("sd_notify %s: %s", state, exc)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "publish":
        return publish_cmd.main(args, args.address or configmod.DEFAULT_ADDRESS)
    if args.command == "snapshotter":
        return _snapshotter_main(args)
    if args.command == "config" and args.config_command == "default":
        sys.stdout.write(configmod.dumps(default_config_table()))
        return 0
    try:
        cfg = load_config(args)
        if args.command == "config":
            sys.stdout.write(configmod.dumps(configmod.to_table(cfg)))
            return 0
        log.setup(cfg.debug.level or "info", cfg.debug.format or "text")
        asyncio.run(serve(cfg))
    except ContainerdError as exc:
        print(f"pycontainerd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _snapshotter_main(args: argparse.Namespace) -> int:
    try:
        log.setup(args.log_level or "info", args.log_format or "text")
        root = Path(args.snapshotter_root).absolute()
        asyncio.run(serve_snapshotter(args.snapshotter, root, Path(args.snapshotter_address)))
    except ContainerdError as exc:
        print(f"pycontainerd snapshotter serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
