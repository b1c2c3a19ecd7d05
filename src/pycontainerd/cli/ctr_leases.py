"""``pyctr leases``: create, list and remove leases (ctr 1.6)."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from typing import Any

from pycontainerd.cli.ctr_run import parse_labels, table
from pycontainerd.cli.shared import format_labels
from pycontainerd.client import Client
from pycontainerd.errdefs import InvalidArgument

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> datetime.timedelta:
    """A Go duration (``24h``, ``1h30m``, ``90s``). Raises InvalidArgument."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise InvalidArgument(f"invalid duration {text!r}")
    return datetime.timedelta(seconds=total)


def cmd_ls(c: Client, args: argparse.Namespace) -> None:
    found = c.leases.list(args.filters)
    if args.format == "json":
        out = [
            {
                "id": lease.id,
                "created_at": None
                if lease.created_at is None
                else lease.created_at.isoformat().replace("+00:00", "Z"),
                "labels": dict(lease.labels),
            }
            for lease in found
        ]
        print(json.dumps(out, indent=2))
    elif args.quiet:
        for lease in found:
            print(lease.id)
    else:
        rows = [["ID", "CREATED AT", "LABELS"]]
        for lease in found:
            created = "-" if lease.created_at is None else lease.created_at.isoformat()
            rows.append([lease.id, created, format_labels(lease.labels)])
        print(table(rows))


def cmd_create(c: Client, args: argparse.Namespace) -> None:
    expire = parse_duration(args.expires) if args.expires and args.expires != "0" else None
    lease = c.leases.create(args.id, labels=parse_labels(args.labels), expire=expire)
    print(lease.id)


def cmd_rm(c: Client, args: argparse.Namespace) -> None:
    for lease_id in args.ids:
        c.leases.delete(lease_id, sync=args.sync)
        print(lease_id)


def cmd_resources(c: Client, args: argparse.Namespace) -> None:
    resources = c.leases.resources(args.id)
    if args.format == "json":
        print(json.dumps([{"id": r.id, "type": r.type} for r in resources], indent=2))
        return
    rows = [["TYPE", "ID"]] + [[r.type, r.id] for r in resources]
    print(table(rows))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("leases", aliases=["lease"], help="manage leases")
    s = p.add_subparsers(dest="action", required=True)

    ls = s.add_parser("ls", aliases=["list"], help="list all active leases")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument("filters", nargs="*")
    ls.set_defaults(fn=cmd_ls)

    create = s.add_parser("create", help="create a lease")
    create.add_argument("--id", default="", help="set the id for the lease")
    create.add_argument("--expires", "-x", default="24h", help="expiration of lease (0: never)")
    create.add_argument("labels", nargs="*")
    create.set_defaults(fn=cmd_create)

    rm = s.add_parser("rm", aliases=["delete", "remove"], help="remove leases")
    rm.add_argument("--sync", action="store_true", help="synchronously remove leases")
    rm.add_argument("ids", nargs="+")
    rm.set_defaults(fn=cmd_rm)

    res = s.add_parser("resources", help="list the resources a lease holds")
    res.add_argument("--format", choices=["table", "json"], default="table")
    res.add_argument("id")
    res.set_defaults(fn=cmd_resources)
