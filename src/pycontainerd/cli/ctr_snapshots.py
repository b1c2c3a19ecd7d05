"""``pyctr snapshots``: prepare, view, commit, list, inspect and remove snapshots."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Sequence
from typing import Any

from pycontainerd.cli.ctr_content import human_size
from pycontainerd.cli.ctr_run import parse_labels, table
from pycontainerd.client import Client
from pycontainerd.snapshots.interface import Info, Mount

DEFAULT = os.environ.get("CONTAINERD_SNAPSHOTTER") or "overlayfs"


def _iso(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return when.isoformat().replace("+00:00", "Z")


def info_json(i: Info) -> dict[str, Any]:
    """A snapshot as ``ctr snapshots info`` prints it (Go field names)."""
    out: dict[str, Any] = {"Kind": i.kind.name.capitalize(), "Name": i.name}
    if i.parent:
        out["Parent"] = i.parent
    if i.labels:
        out["Labels"] = dict(i.labels)
    out["Created"] = _iso(i.created_at)
    out["Updated"] = _iso(i.updated_at)
    return out


def mount_commands(mounts: Sequence[Mount], target: str) -> list[str]:
    """``mount -t <type> <source> <target> -o <options>`` lines, as ctr prints them."""
    return [
        f"mount -t {m.type} {m.source} {target}"
        + (f" -o {','.join(m.options)}" if m.options else "")
        for m in mounts
    ]


def cmd_ls(c: Client, args: argparse.Namespace) -> None:
    found = c.snapshots(args.snapshotter).list(args.filters)
    if args.format == "json":
        print(json.dumps([info_json(i) for i in found], indent=2))
        return
    rows = [["KEY", "PARENT", "KIND"]]
    rows += [[i.name, i.parent, i.kind.name.capitalize()] for i in found]
    print(table(rows))


def cmd_prepare(c: Client, args: argparse.Namespace) -> None:
    sn = c.snapshots(args.snapshotter)
    labels = parse_labels(args.label)
    mounts = sn.prepare(args.key, args.parent, labels)
    if args.mounts:
        print("\n".join(mount_commands(mounts, args.target or args.key)))


def cmd_view(c: Client, args: argparse.Namespace) -> None:
    mounts = c.snapshots(args.snapshotter).view(args.key, args.parent, parse_labels(args.label))
    if args.mounts:
        print("\n".join(mount_commands(mounts, args.target or args.key)))


def cmd_mounts(c: Client, args: argparse.Namespace) -> None:
    mounts = c.snapshots(args.snapshotter).mounts(args.key)
    print("\n".join(mount_commands(mounts, args.target)))


def cmd_commit(c: Client, args: argparse.Namespace) -> None:
    c.snapshots(args.snapshotter).commit(args.name, args.key, parse_labels(args.label))


def cmd_rm(c: Client, args: argparse.Namespace) -> None:
    sn = c.snapshots(args.snapshotter)
    for key in args.keys:
        sn.remove(key)


def cmd_info(c: Client, args: argparse.Namespace) -> None:
    print(json.dumps(info_json(c.snapshots(args.snapshotter).stat(args.key)), indent=4))


def cmd_label(c: Client, args: argparse.Namespace) -> None:
    info = c.snapshots(args.snapshotter).update_labels(args.key, parse_labels(args.labels))
    print("updated " + ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items())))


def cmd_usage(c: Client, args: argparse.Namespace) -> None:
    sn = c.snapshots(args.snapshotter)
    keys = [args.key] if args.key else [i.name for i in sn.list()]
    rows = [["KEY", "SIZE", "INODES"]]
    usages = []
    for key in keys:
        u = sn.usage(key)
        usages.append({"key": key, "size": u.size, "inodes": u.inodes})
        rows.append([key, str(u.size) if args.b else human_size(u.size), str(u.inodes)])
    if args.format == "json":
        print(json.dumps(usages, indent=2))
    else:
        print(table(rows))


def cmd_tree(c: Client, args: argparse.Namespace) -> None:
    infos = c.snapshots(args.snapshotter).list()
    by_parent: dict[str, list[str]] = {}
    for i in infos:
        by_parent.setdefault(i.parent, []).append(i.name)

    def show(name: str, depth: int) -> None:
        print("  " * depth + (("\\_ " if depth else "") + name))
        for child in sorted(by_parent.get(name, [])):
            show(child, depth + 1)

    for root in sorted(by_parent.get("", [])):
        show(root, 0)


def cmd_cleanup(c: Client, args: argparse.Namespace) -> None:
    c.snapshots(args.snapshotter).cleanup()


def add_commands(sub: Any) -> None:
    p = sub.add_parser("snapshots", aliases=["snapshot"], help="manage snapshots")
    p.add_argument("--snapshotter", default=DEFAULT, help="snapshotter name")
    s = p.add_subparsers(dest="action", required=True)

    ls = s.add_parser("ls", aliases=["list"], help="list snapshots")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument("filters", nargs="*")
    ls.set_defaults(fn=cmd_ls)

    for name, fn, help_text in (
        ("prepare", cmd_prepare, "prepare a snapshot from a committed snapshot"),
        ("view", cmd_view, "create a read-only snapshot from a committed snapshot"),
    ):
        x = s.add_parser(name, help=help_text)
        x.add_argument("--target", "-t", default="", help="mount target path")
        x.add_argument("--mounts", action="store_true", help="print out snapshot mounts as JSON")
        x.add_argument("--label", action="append", default=[], help="labels key=value")
        x.add_argument("key")
        x.add_argument("parent", nargs="?", default="")
        x.set_defaults(fn=fn)

    mounts = s.add_parser("mounts", aliases=["m", "mount"], help="mount commands of a snapshot")
    mounts.add_argument("target")
    mounts.add_argument("key")
    mounts.set_defaults(fn=cmd_mounts)

    commit = s.add_parser("commit", help="commit an active snapshot into the provided name")
    commit.add_argument("--label", action="append", default=[])
    commit.add_argument("name")
    commit.add_argument("key")
    commit.set_defaults(fn=cmd_commit)

    rm = s.add_parser("rm", aliases=["delete", "del", "remove"], help="remove snapshots")
    rm.add_argument("keys", nargs="+")
    rm.set_defaults(fn=cmd_rm)

    info = s.add_parser("info", help="get info about a snapshot")
    info.add_argument("key")
    info.set_defaults(fn=cmd_info)

    label = s.add_parser("label", help="add labels to a snapshot")
    label.add_argument("key")
    label.add_argument("labels", nargs="*")
    label.set_defaults(fn=cmd_label)

    usage = s.add_parser("usage", help="usage snapshots")
    usage.add_argument("--b", action="store_true", help="display size in bytes")
    usage.add_argument("--format", choices=["table", "json"], default="table")
    usage.add_argument("key", nargs="?", default="")
    usage.set_defaults(fn=cmd_usage)

    tree = s.add_parser("tree", help="display tree view of snapshot branches")
    tree.set_defaults(fn=cmd_tree)

    cleanup = s.add_parser("cleanup", help="ask the snapshotter to free unused resources")
    cleanup.set_defaults(fn=cmd_cleanup)
