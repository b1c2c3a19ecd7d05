"""``pyctr containers``: create, list, inspect, label and remove containers (ctr 1.6)."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
from typing import Any

from pycontainerd.cli.ctr_run import add_container_flags, create_container, parse_labels, table
from pycontainerd.client import Client
from pycontainerd.client.containers import Container
from pycontainerd.errdefs import ContainerdError


def _rfc3339(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


def _any_json(value: Any) -> dict[str, Any]:
    out = {"type_url": value.type_url}
    if value.value:  # Go omits empty bytes
        out["value"] = base64.b64encode(value.value).decode()
    return out


def container_json(c: Container) -> dict[str, Any]:
    """A container as ``ctr containers info`` prints it (Go field names)."""
    options = None if c.runtime.options is None else _any_json(c.runtime.options)
    runtime: dict[str, Any] = {"Name": c.runtime.name, "Options": options}
    out: dict[str, Any] = {
        "ID": c.id,
        "Labels": dict(c.labels) or None,
        "Image": c.image,
        "Runtime": runtime,
        "SnapshotKey": c.snapshot_key,
        "Snapshotter": c.snapshotter,
        "CreatedAt": _rfc3339(c.created_at_ns),
        "UpdatedAt": _rfc3339(c.updated_at_ns),
        "Extensions": {k: _any_json(v) for k, v in c.extensions.items()} or None,
        "SandboxID": c.sandbox,
    }
    if c.spec is not None:
        out["Spec"] = c.spec
    return out


def cmd_create(c: Client, args: argparse.Namespace) -> None:
    create_container(c, args)


def cmd_list(c: Client, args: argparse.Namespace) -> None:
    found = c.containers.list(args.filters)
    if args.format == "json":
        print(json.dumps([container_json(x) for x in found], indent=4))
    elif args.quiet:
        for x in found:
            print(x.id)
    else:
        rows = [["CONTAINER", "IMAGE", "RUNTIME"]]
        rows += [[x.id, x.image or "-", x.runtime.name] for x in found]
        print(table(rows))


def cmd_info(c: Client, args: argparse.Namespace) -> None:
    container = c.containers.get(args.id)
    if args.spec:
        print(json.dumps(container.spec, indent=4))
    else:
        print(json.dumps(container_json(container), indent=4))


def cmd_delete(c: Client, args: argparse.Namespace) -> None:
    failed: list[str] = []
    for cid in args.ids:
        try:
            c.containers.delete(cid, cleanup_snapshot=not args.keep_snapshot)
        except ContainerdError as exc:
            failed.append(f"{cid}: {exc}")
    if failed:
        raise ContainerdError("failed to delete " + "; ".join(failed))


def cmd_label(c: Client, args: argparse.Namespace) -> None:
    labels = c.containers.set_labels(args.id, parse_labels(args.labels))
    print(",".join(f"{k}={v}" for k, v in sorted(labels.items())))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("containers", aliases=["container", "c"], help="manage containers")
    csub = p.add_subparsers(dest="action", required=True)

    create = csub.add_parser("create", help="create a container")
    add_container_flags(create)
    create.set_defaults(fn=cmd_create)

    ls = csub.add_parser("list", aliases=["ls"], help="list containers")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument("filters", nargs="*")
    ls.set_defaults(fn=cmd_list)

    info = csub.add_parser("info", help="print a container as JSON")
    info.add_argument("--spec", action="store_true", help="only the spec")
    info.add_argument("id", metavar="CONTAINER")
    info.set_defaults(fn=cmd_info)

    rm = csub.add_parser("delete", aliases=["del", "remove", "rm"], help="delete containers")
    rm.add_argument("--keep-snapshot", action="store_true", help="keep the rootfs snapshot")
    rm.add_argument("ids", nargs="+", metavar="CONTAINER")
    rm.set_defaults(fn=cmd_delete)

    label = csub.add_parser("label", help="set and clear labels (key=value; key= clears)")
    label.add_argument("id", metavar="CONTAINER")
    label.add_argument("labels", nargs="*")
    label.set_defaults(fn=cmd_label)
