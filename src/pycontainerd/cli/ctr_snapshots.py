"""``pyctr snapshots``: prepare, view, commit, list, inspect and remove snapshots."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pycontainerd.cli.ctr_run import parse_labels, table
from pycontainerd.cli.shared import human_size
from pycontainerd.client import Client
from pycontainerd.client.snapshots import SnapshotsAPI, mounts_to_proto
from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import InvalidArgument, NotFound
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.unpack import unpack_image
from pycontainerd.snapshots.interface import Info, Kind, Mount

from pycontainerd._api.containerd.services.diff.v1 import (  # isort: skip
    diff_pb2,
    diff_pb2_grpc,
)

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

DEFAULT = os.environ.get("CONTAINERD_SNAPSHOTTER") or "overlayfs"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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


async def _mounts_of(
    sn: SnapshotsAPI, key: str, stack: contextlib.AsyncExitStack, view_key: str
) -> list[Mount]:
    """An active (or view) snapshot's own mounts, or those of a temporary view of a
    committed one (removed when ``stack`` closes). ctr views views too, which fails: a
    view cannot be a parent."""
    info = await sn.stat(key)
    if info.kind in (Kind.ACTIVE, Kind.VIEW):
        return await sn.mounts(key)
    mounts = await sn.view(view_key, key)
    stack.push_async_callback(_remove_quietly, sn, view_key)
    return mounts


async def _remove_quietly(sn: SnapshotsAPI, key: str) -> None:
    with contextlib.suppress(NotFound):
        await sn.remove(key)


def _unique() -> str:
    return f"{time.time_ns()}-{secrets.token_hex(4)}"


async def create_diff(
    client: AsyncClient,
    snapshotter: str,
    id_a: str,
    id_b: str = "",
    *,
    media_type: str = mt.OCI_LAYER_GZIP,
    ref: str = "",
    labels: Mapping[str, str] | None = None,
) -> Descriptor:
    """The diff of ``id_a`` against its parent, or from ``id_a`` to ``id_b``, written to
    the content store by the daemon's diff service (containerd's ``rootfs.CreateDiff``).

    Raises:
        NotFound: a snapshot does not exist.
    Temporary views are removed even on failure or cancellation.
    """
    sn = client.snapshots(snapshotter)
    async with contextlib.AsyncExitStack() as stack:
        if id_b:
            lower = await _mounts_of(sn, id_a, stack, f"{id_a}-view-{_unique()}")
            upper = await _mounts_of(sn, id_b, stack, f"{id_b}-view-{_unique()}")
        else:
            parent = (await sn.stat(id_a)).parent
            lower_key = f"{parent}-parent-view-{_unique()}"
            lower = await sn.view(lower_key, parent)
            stack.push_async_callback(_remove_quietly, sn, lower_key)
            upper = await _mounts_of(sn, id_a, stack, f"{id_a}-view-{_unique()}")
        req = diff_pb2.DiffRequest(
            left=mounts_to_proto(lower),
            right=mounts_to_proto(upper),
            media_type=media_type,
            ref=ref,
            labels=dict(labels or {}),
        )
        stub = diff_pb2_grpc.DiffStub(client.channel)
        # A large snapshot takes long to diff: no per-call deadline.
        resp = await client.call(stub.Diff, req, timeout=3600.0)
        return Descriptor.from_proto(resp.diff)


def cmd_diff(c: Client, args: argparse.Namespace) -> None:
    labels = parse_labels(args.label)
    if args.keep:
        # As ctr: a root the collector keeps until someone removes the blob.
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        labels["containerd.io/gc.root"] = now.isoformat().replace("+00:00", "Z")
    out = sys.stdout.buffer

    async def run() -> None:
        # One lease for the diff and the read: without --keep the blob is the
        # collector's once it has been printed.
        async with c.aio.lease():
            desc = await create_diff(
                c.aio,
                args.snapshotter,
                args.id_a,
                args.id_b,
                media_type=args.media_type,
                ref=args.ref,
                labels=labels,
            )
            async for chunk in c.aio.content.read(desc.digest):
                out.write(chunk)
        out.flush()

    c.run(run())


def cmd_unpack(c: Client, args: argparse.Namespace) -> None:
    if not DIGEST.fullmatch(args.digest):
        raise InvalidArgument(f"{args.digest!r}: not a digest")
    for img in c.images.list():
        if img.target.digest == args.digest:
            print(f"unpacking {args.digest} ({img.target.media_type})...", end="", flush=True)
            try:
                c.run(unpack_image(c.aio, img.name, img.target, snapshotter=args.snapshotter))
            except BaseException:
                print()
                raise
            print("done")
            return
    raise NotFound("manifest not found")


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

    diff = s.add_parser(
        "diff",
        help="get the diff of two snapshots; the default second snapshot is the first's parent",
    )
    diff.add_argument("--media-type", default=mt.OCI_LAYER_GZIP, help="media type of the diff")
    diff.add_argument("--ref", default="", help="content upload reference to use")
    diff.add_argument("--keep", action="store_true", help="keep the diff content (gc root)")
    diff.add_argument("--label", "-l", action="append", default=[], help="labels key=value")
    diff.add_argument("id_a")
    diff.add_argument("id_b", nargs="?", default="")
    diff.set_defaults(fn=cmd_diff)

    unpack = s.add_parser("unpack", help="unpack applies layers from a manifest to a snapshot")
    # ctr takes --snapshotter here too; SUPPRESS keeps the group's value when absent.
    unpack.add_argument("--snapshotter", default=argparse.SUPPRESS, help="snapshotter name")
    unpack.add_argument("digest")
    unpack.set_defaults(fn=cmd_unpack)
