"""``pyctr``: containerd's ``ctr`` command tree, built on ``pycontainerd.client``.

This first part covers the server (version, plugins), namespaces and events; later
capabilities add their commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import any_pb2, json_format

from pycontainerd import __version__
from pycontainerd.cli import (
    ctr_containers,
    ctr_content,
    ctr_images,
    ctr_leases,
    ctr_run,
    ctr_snapshots,
    ctr_tasks,
)
from pycontainerd.client import Client
from pycontainerd.errdefs import ContainerdError

COMMAND_GROUPS: list[Callable[[Any], None]] = [
    ctr_run.add_commands,
    ctr_containers.add_commands,
    ctr_tasks.add_commands,
    ctr_images.add_commands,
    ctr_content.add_commands,
    ctr_snapshots.add_commands,
    ctr_leases.add_commands,
]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ContainerdError(f"label {pair!r} must be key=value")
        out[key] = value
    return out


def cmd_version(c: Client, args: argparse.Namespace) -> None:
    v = c.version()
    if args.format == "json":
        print(
            json.dumps(
                {
                    "client": {"version": __version__},
                    "server": {"version": v.version, "revision": v.revision, "uuid": v.uuid},
                }
            )
        )
        return
    print(
        f"Client:\n  Version:  {__version__}\n\nServer:\n  Version:  {v.version}\n"
        f"  Revision: {v.revision}\n  UUID: {v.uuid}"
    )


def cmd_plugins(c: Client, args: argparse.Namespace) -> None:
    plugins = c.plugins(args.filters)
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "type": p.type,
                        "id": p.id,
                        "requires": p.requires,
                        "platforms": p.platforms,
                        "exports": dict(p.exports),
                        "status": p.status,
                        "error": p.error,
                    }
                    for p in plugins
                ]
            )
        )
        return
    if args.detailed:
        for p in plugins:
            print(f"Type:      {p.type}\nID:        {p.id}")
            if p.requires:
                print("Requires:  " + ", ".join(p.requires))
            if p.platforms:
                print("Platforms: " + ", ".join(p.platforms))
            for k, v in sorted(p.exports.items()):
                print(f"Export:    {k}={v}")
            if p.error:
                print(f"Error:     {p.error}")
            print()
        return
    rows = [["TYPE", "ID", "PLATFORMS", "STATUS"]]
    rows += [[p.type, p.id, ",".join(p.platforms) or "-", p.status] for p in plugins]
    print(_table(rows))


def cmd_namespaces(c: Client, args: argparse.Namespace) -> None:
    if args.action == "create":
        c.create_namespace(args.name, _labels(args.labels))
    elif args.action == "label":
        c.label_namespace(args.name, _labels(args.labels))
    elif args.action in ("rm", "remove"):
        for name in args.names:
            c.delete_namespace(name)
            print(name)
    else:
        found = c.namespaces()
        if args.format == "json":
            print(
                json.dumps(
                    [{"name": n.name, "labels": dict(n.labels)} for n in found], sort_keys=True
                )
            )
        elif args.quiet:
            for n in found:
                print(n.name)
        else:
            rows = [["NAME", "LABELS"]]
            rows += [
                [n.name, ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))] for n in found
            ]
            print(_table(rows))


def cmd_events(c: Client, args: argparse.Namespace) -> None:
    for env in c.events(args.filters):
        # an event whose type this client does not know stays a bare Any: print {}
        body = (
            "{}"
            if isinstance(env.event, any_pb2.Any)
            else json_format.MessageToJson(env.event, indent=None)
        )
        print(env.timestamp_ns, env.namespace, env.topic, body, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyctr", description="command line for containerd-style daemons"
    )
    p.add_argument(
        "--address",
        "-a",
        help="daemon socket (default $CONTAINERD_ADDRESS or /run/pycontainerd/containerd.sock)",
    )
    p.add_argument("--namespace", "-n", help="namespace (default $CONTAINERD_NAMESPACE or default)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("version", help="print the client and server versions")
    v.add_argument("--format", choices=["table", "json"], default="table")
    v.set_defaults(fn=cmd_version)

    pl = sub.add_parser("plugins", aliases=["plugin"], help="list plugins")
    pl_sub = pl.add_subparsers(dest="action", required=True)
    ls = pl_sub.add_parser("ls", aliases=["list"])
    ls.add_argument("--detailed", "-d", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument("filters", nargs="*")
    ls.set_defaults(fn=cmd_plugins)

    ns = sub.add_parser("namespaces", aliases=["namespace", "ns"], help="manage namespaces")
    ns_sub = ns.add_subparsers(dest="action", required=True)
    create = ns_sub.add_parser("create", aliases=["c"])
    create.add_argument("name")
    create.add_argument("labels", nargs="*")
    label = ns_sub.add_parser("label")
    label.add_argument("name")
    label.add_argument("labels", nargs="*")
    nls = ns_sub.add_parser("ls", aliases=["list"])
    nls.add_argument("--quiet", "-q", action="store_true")
    nls.add_argument("--format", choices=["table", "json"], default="table")
    rm = ns_sub.add_parser("rm", aliases=["remove"])
    rm.add_argument("names", nargs="+")
    for x in (create, label, nls, rm):
        x.set_defaults(fn=cmd_namespaces)
    create.set_defaults(action="create")
    label.set_defaults(action="label")
    nls.set_defaults(action="ls")
    rm.set_defaults(action="rm")

    ev = sub.add_parser("events", aliases=["event"], help="print events as they happen")
    ev.add_argument("filters", nargs="*")
    ev.set_defaults(fn=cmd_events)

    # Command groups that live in their own modules (cli/ctr_<area>.py), each with
    # ``add_commands(subparsers)`` registering parsers whose ``fn(client, args)`` runs them.
    for add_commands in COMMAND_GROUPS:
        add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.address, namespace=args.namespace, timeout=args.timeout) as c:
            args.fn(c, args)
    except ContainerdError as exc:
        print(f"pyctr: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
