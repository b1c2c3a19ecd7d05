"""``pyctr images``: list, tag, label, check, remove, import/export, mount, pull and push."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
from typing import Any

from pycontainerd.cli.ctr_run import parse_labels, table
from pycontainerd.cli.shared import (
    add_registry_flags,
    format_labels,
    human_size,
    progress_reporter,
    registry_options,
)
from pycontainerd.client import Client
from pycontainerd.client.types import Image
from pycontainerd.errdefs import ContainerdError, NotFound, NotImplemented_
from pycontainerd.images import archive, convert
from pycontainerd.images.platforms import Matcher, parse_platform
from pycontainerd.images.unpack import chain_ids, unpack_image

DEFAULT_SNAPSHOTTER = os.environ.get("CONTAINERD_SNAPSHOTTER") or "overlayfs"


def _matcher(args: argparse.Namespace) -> Matcher | None:
    platforms = [parse_platform(p) for p in getattr(args, "platform", None) or []]
    return Matcher(platforms) if platforms else None


def _iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def image_json(img: Image, size: int | None, platforms: list[str]) -> dict[str, Any]:
    return {
        "name": img.name,
        "target": img.target.to_json(),
        "labels": dict(img.labels),
        "created_at": _iso(img.created_at),
        "updated_at": _iso(img.updated_at),
        "size": size,
        "platforms": platforms,
    }


def _size_and_platforms(c: Client, img: Image) -> tuple[int | None, list[str]]:
    try:
        platforms = [str(p) for p in c.images.platforms(img.target)]
    except (NotFound, NotImplemented_):
        platforms = []
    try:
        size: int | None = c.images.size(img.target)
    except ContainerdError:
        size = None
    return size, platforms


def cmd_ls(c: Client, args: argparse.Namespace) -> None:
    found = sorted(c.images.list(args.filters), key=lambda i: i.name)
    if args.quiet:
        for img in found:
            print(img.name)
        return
    details = [(img, *_size_and_platforms(c, img)) for img in found]
    if args.format == "json":
        print(json.dumps([image_json(i, s, p) for i, s, p in details], indent=2))
        return
    rows = [["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]]
    for img, size, platforms in details:
        rows.append(
            [
                img.name,
                img.target.media_type,
                img.target.digest,
                "-" if size is None else human_size(size),
                ",".join(platforms) or "-",
                format_labels(img.labels),
            ]
        )
    print(table(rows))


def cmd_rm(c: Client, args: argparse.Namespace) -> None:
    failed = False
    for i, name in enumerate(args.refs):
        try:
            # Like ctr: only the last delete waits for the collection (--sync).
            c.images.delete(name, sync=args.sync and i == len(args.refs) - 1)
            print(name)
        except NotFound:
            print(f"pyctr: image {name!r}: not found", file=sys.stderr)
            failed = True
    if failed:
        raise SystemExit(1)


def cmd_tag(c: Client, args: argparse.Namespace) -> None:
    for target in args.targets:
        c.images.tag(args.source, target, force=args.force)
        print(target)


def cmd_label(c: Client, args: argparse.Namespace) -> None:
    labels = parse_labels(args.labels)
    if args.replace_all:
        current = c.images.get(args.ref)
        labels = {**dict.fromkeys(current.labels, ""), **labels}
    img = c.images.set_labels(args.ref, labels)
    print(format_labels(img.labels) if img.labels else "")


def cmd_check(c: Client, args: argparse.Namespace) -> None:
    found = sorted(c.images.list(args.filters), key=lambda i: i.name)
    results = []
    for img in found:
        check = c.images.check(img, _matcher(args))
        size = sum(d.size for d in check.present)
        total = sum(d.size for d in check.required)
        try:
            chain = chain_ids(c.images.manifest(img.target, _matcher(args)).diff_ids)[-1]
            c.snapshots(args.snapshotter).stat(chain)
            unpacked = True
        except (ContainerdError, IndexError):
            unpacked = False
        status = "complete" if check.complete else "incomplete"
        results.append(
            (img, status, size, total, len(check.present), len(check.required), unpacked)
        )
    if args.quiet:
        for img, *_ in results:
            print(img.name)
        return
    if args.format == "json":
        out = [
            {
                "name": img.name,
                "type": img.target.media_type,
                "digest": img.target.digest,
                "status": status,
                "available": present,
                "required": required,
                "size": size,
                "total": total,
                "unpacked": unpacked,
            }
            for img, status, size, total, present, required, unpacked in results
        ]
        print(json.dumps(out, indent=2))
        return
    rows = [["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]]
    for img, status, size, total, present, required, unpacked in results:
        rows.append(
            [
                img.name,
                img.target.media_type,
                img.target.digest,
                f"{status} ({present}/{required})",
                f"{human_size(size)}/{human_size(total)}",
                str(unpacked).lower(),
            ]
        )
    print(table(rows))


def cmd_import(c: Client, args: argparse.Namespace) -> None:
    source: Any = sys.stdin.buffer if args.input == "-" else args.input
    imported = c.run(
        archive.import_archive(
            c.aio,
            source,
            base_name=args.base_name,
            index_name=args.index_name,
            platform=_matcher(args),
            all_platforms=args.all_platforms,
            unpack=not args.no_unpack,
            snapshotter=args.snapshotter,
        )
    )
    for item in imported:
        if args.no_unpack:
            print(f"{item.image.name} saved")
        else:
            print(f"unpacking {item.image.name} ({item.image.target.digest})...done")


def cmd_export(c: Client, args: argparse.Namespace) -> None:
    dest: Any = sys.stdout.buffer if args.output == "-" else args.output
    c.run(
        archive.export_archive(
            c.aio,
            dest,
            args.refs,
            platform=_matcher(args),
            all_platforms=args.all_platforms,
            skip_manifest_json=args.skip_manifest_json,
        )
    )


def cmd_mount(c: Client, args: argparse.Namespace) -> None:
    from pycontainerd.snapshots.mount import mount_all

    target = os.path.abspath(args.target)
    img = c.images.get(args.ref)
    matcher = _matcher(args)
    chain = c.run(
        unpack_image(c.aio, img.name, img.target, snapshotter=args.snapshotter, platform=matcher)
    )
    # As ctr: a lease named after the target keeps the snapshot until ``unmount --rm``.
    lease_label = {f"containerd.io/gc.ref.snapshot.{args.snapshotter}": target}
    try:
        c.leases.create(target, labels=lease_label, expire=datetime.timedelta(hours=24))
    except ContainerdError as exc:
        raise ContainerdError(f"lease {target!r} exists: is it already mounted? ({exc})") from None
    previous, c.aio.default_lease = c.aio.default_lease, target
    try:
        sn = c.snapshots(args.snapshotter)
        mounts = sn.prepare(target, chain) if args.rw else sn.view(target, chain)
    finally:
        c.aio.default_lease = previous
    os.makedirs(target, exist_ok=True)
    mount_all(mounts, target)
    print(target)


def cmd_unmount(c: Client, args: argparse.Namespace) -> None:
    from pycontainerd.snapshots.mount import unmount_all

    target = os.path.abspath(args.target)
    unmount_all(target)
    if args.rm:
        with contextlib.suppress(NotFound):
            c.snapshots(args.snapshotter).remove(target)
        with contextlib.suppress(NotFound):
            c.leases.delete(target)
    print(target)


def cmd_pull(c: Client, args: argparse.Namespace) -> None:
    platforms = [parse_platform(p) for p in args.platform or []]
    with progress_reporter() as progress:
        img = c.run(
            c.aio.pull(
                args.ref,
                unpack=not args.skip_unpack,
                platform=Matcher(platforms) if platforms else None,
                all_platforms=args.all_platforms,
                snapshotter=args.snapshotter,
                progress=progress,
                **registry_options(args),
            )
        )
    if args.label:
        c.images.set_labels(img.name, parse_labels(args.label))
    if args.print_chainid and not args.skip_unpack:
        resolved = c.images.manifest(img.target, Matcher(platforms) if platforms else None)
        print(f"image chain ID: {chain_ids(resolved.diff_ids)[-1]}")
    print(f"{img.name}: {img.target.digest}")


def cmd_push(c: Client, args: argparse.Namespace) -> None:
    platforms = [parse_platform(p) for p in args.platform or []]
    with progress_reporter() as progress:
        desc = c.run(
            c.aio.push(
                args.remote,
                args.local or None,
                platform=Matcher(platforms) if platforms else None,
                progress=progress,
                **registry_options(args),
            )
        )
    print(f"{args.remote}: {desc.digest}")


def cmd_convert(c: Client, args: argparse.Namespace) -> None:
    platforms = [parse_platform(p) for p in args.platform or []]
    img = c.run(
        convert.convert_image(
            c.aio,
            args.source_ref,
            args.target_ref,
            uncompress=args.uncompress,
            docker_to_oci=args.oci,
            platform=convert.platform_filter(platforms, args.all_platforms),
        )
    )
    print(img.target.digest)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("images", aliases=["image", "i"], help="manage images")
    s = p.add_subparsers(dest="action", required=True)

    ls = s.add_parser("ls", aliases=["list"], help="list images known to the daemon")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument("filters", nargs="*")
    ls.set_defaults(fn=cmd_ls)

    rm = s.add_parser("rm", aliases=["delete", "del", "remove"], help="remove images")
    rm.add_argument("--sync", action="store_true", help="wait for the garbage collection")
    rm.add_argument("refs", nargs="+")
    rm.set_defaults(fn=cmd_rm)

    tag = s.add_parser("tag", help="tag an image")
    tag.add_argument("--force", action="store_true", help="replace an existing target")
    tag.add_argument("source")
    tag.add_argument("targets", nargs="+")
    tag.set_defaults(fn=cmd_tag)

    label = s.add_parser("label", help="set and clear labels for an image")
    label.add_argument("--replace-all", "-r", action="store_true")
    label.add_argument("ref")
    label.add_argument("labels", nargs="*")
    label.set_defaults(fn=cmd_label)

    check = s.add_parser("check", help="check that images have all their content")
    check.add_argument("--quiet", "-q", action="store_true")
    check.add_argument("--format", choices=["table", "json"], default="table")
    check.add_argument("--snapshotter", default=DEFAULT_SNAPSHOTTER)
    check.add_argument("--platform", action="append")
    check.add_argument("filters", nargs="*")
    check.set_defaults(fn=cmd_check)

    imp = s.add_parser("import", help="import images from an OCI or docker archive")
    imp.add_argument("--base-name", default="", help="base image name for added images")
    imp.add_argument("--index-name", default="", help="image name to keep the index as")
    imp.add_argument("--all-platforms", action="store_true")
    imp.add_argument("--platform", action="append")
    imp.add_argument("--no-unpack", action="store_true")
    imp.add_argument("--snapshotter", default=DEFAULT_SNAPSHOTTER)
    imp.add_argument("input", help="archive path, or - for stdin")
    imp.set_defaults(fn=cmd_import)

    exp = s.add_parser("export", help="export images as an OCI archive")
    exp.add_argument("--all-platforms", action="store_true")
    exp.add_argument("--platform", action="append")
    exp.add_argument("--skip-manifest-json", action="store_true")
    exp.add_argument("output", help="archive path, or - for stdout")
    exp.add_argument("refs", nargs="+")
    exp.set_defaults(fn=cmd_export)

    mount = s.add_parser("mount", help="mount an image to a target path")
    mount.add_argument("--snapshotter", default=DEFAULT_SNAPSHOTTER)
    mount.add_argument("--rw", action="store_true", help="read-write (an active snapshot)")
    mount.add_argument("--platform", action="append")
    mount.add_argument("ref")
    mount.add_argument("target")
    mount.set_defaults(fn=cmd_mount)

    unmount = s.add_parser("unmount", help="unmount the image from the target")
    unmount.add_argument("--snapshotter", default=DEFAULT_SNAPSHOTTER)
    unmount.add_argument("--rm", action="store_true", help="remove the snapshot and lease")
    unmount.add_argument("target")
    unmount.set_defaults(fn=cmd_unmount)

    pull = s.add_parser("pull", help="pull an image from a registry")
    add_registry_flags(pull)
    pull.add_argument("--snapshotter", default=DEFAULT_SNAPSHOTTER)
    pull.add_argument("--all-platforms", action="store_true")
    pull.add_argument("--skip-unpack", action="store_true", help="fetch only, do not unpack")
    pull.add_argument("--label", action="append", default=[], help="labels for the image")
    pull.add_argument("--print-chainid", action="store_true")
    pull.add_argument("ref")
    pull.set_defaults(fn=cmd_pull)

    push = s.add_parser("push", help="push an image to a registry")
    add_registry_flags(push)
    push.add_argument("remote", help="where to push (a reference with a tag)")
    push.add_argument("local", nargs="?", default="", help="local image (default: remote)")
    push.set_defaults(fn=cmd_push)

    conv = s.add_parser("convert", help="convert an image")
    conv.add_argument(
        "--uncompress", action="store_true", help="convert tar.gz layers to uncompressed tar"
    )
    conv.add_argument("--oci", action="store_true", help="convert Docker media types to OCI")
    conv.add_argument("--platform", action="append", help="keep only this platform")
    conv.add_argument("--all-platforms", action="store_true", help="keep every platform")
    conv.add_argument("source_ref")
    conv.add_argument("target_ref")
    conv.set_defaults(fn=cmd_convert)
