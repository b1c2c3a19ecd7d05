"""``pyctr content``: list, read, write, label and remove blobs and ingests (ctr 1.6)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from pycontainerd.cli.ctr_run import parse_labels, table
from pycontainerd.client import Client
from pycontainerd.client.content import ContentInfo, IngestStatus


def human_size(n: float) -> str:
    """Sizes as ctr prints them (``progress.Bytes``): ``1.9 MiB``, ``422 B``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def human_age(when: datetime.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.datetime.now(datetime.UTC) - when).total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} seconds"


def format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def info_json(i: ContentInfo) -> dict[str, Any]:
    return {
        "digest": i.digest,
        "size": i.size,
        "labels": dict(i.labels),
        "created_at": _iso(i.created_at),
        "updated_at": _iso(i.updated_at),
    }


def status_json(s: IngestStatus) -> dict[str, Any]:
    return {
        "ref": s.ref,
        "offset": s.offset,
        "total": s.total,
        "expected": s.expected,
        "started_at": _iso(s.started_at),
        "updated_at": _iso(s.updated_at),
    }


def cmd_ls(c: Client, args: argparse.Namespace) -> None:
    infos = c.content.list(args.filters)
    if args.format == "json":
        print(json.dumps([info_json(i) for i in infos], indent=2))
    elif args.quiet:
        for i in infos:
            print(i.digest)
    else:
        rows = [["DIGEST", "SIZE", "AGE", "LABELS"]]
        rows += [
            [i.digest, human_size(i.size), human_age(i.created_at), format_labels(i.labels)]
            for i in infos
        ]
        print(table(rows))


def cmd_get(c: Client, args: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    chunks: Iterator[bytes] = c.content.read(args.digest)
    for chunk in chunks:
        out.write(chunk)
    out.flush()


def _stdin_chunks() -> Iterator[bytes]:
    while chunk := sys.stdin.buffer.read(1 << 20):
        yield chunk


def cmd_ingest(c: Client, args: argparse.Namespace) -> None:
    desc = c.content.write_blob(
        args.ref,
        _stdin_chunks(),
        size=args.expected_size,
        expected=args.expected_digest,
    )
    if args.format == "json":
        print(json.dumps({"digest": desc.digest, "size": desc.size}))


def cmd_active(c: Client, args: argparse.Namespace) -> None:
    statuses = c.content.list_statuses(args.filters)
    if args.format == "json":
        print(json.dumps([status_json(s) for s in statuses], indent=2))
        return
    rows = [["REF", "SIZE", "AGE"]]
    rows += [[s.ref, f"{s.offset}/{s.total}", human_age(s.started_at)] for s in statuses]
    print(table(rows))


def cmd_abort(c: Client, args: argparse.Namespace) -> None:
    for ref in args.refs:
        c.content.abort(ref)


def cmd_delete(c: Client, args: argparse.Namespace) -> None:
    failed = False
    for digest in args.digests:
        try:
            c.content.delete(digest)
            print(digest)
        except Exception as exc:  # report each, as ctr does, and fail at the end
            print(f"pyctr: {digest}: {exc}", file=sys.stderr)
            failed = True
    if failed:
        raise SystemExit(1)


def cmd_label(c: Client, args: argparse.Namespace) -> None:
    labels = parse_labels(args.labels)
    info = c.content.update_labels(args.digest, labels)
    print("updated " + ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items())))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("content", help="manage content")
    s = p.add_subparsers(dest="action", required=True)

    ls = s.add_parser("ls", aliases=["list"], help="list all blobs in the store")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument("filters", nargs="*")
    ls.set_defaults(fn=cmd_ls)

    get = s.add_parser("get", help="get the data for an object")
    get.add_argument("digest")
    get.set_defaults(fn=cmd_get)

    ingest = s.add_parser("ingest", help="accept content into the store from stdin")
    ingest.add_argument("--expected-size", type=int, default=0)
    ingest.add_argument("--expected-digest", default="")
    ingest.add_argument("--format", choices=["none", "json"], default="none")
    ingest.add_argument("ref")
    ingest.set_defaults(fn=cmd_ingest)

    active = s.add_parser("active", help="display active transfers")
    active.add_argument("--format", choices=["table", "json"], default="table")
    active.add_argument("filters", nargs="*")
    active.set_defaults(fn=cmd_active)

    abort = s.add_parser("abort", help="abort active transfers")
    abort.add_argument("refs", nargs="+")
    abort.set_defaults(fn=cmd_abort)

    rm = s.add_parser("rm", aliases=["delete", "del", "remove"], help="permanently delete blobs")
    rm.add_argument("digests", nargs="+")
    rm.set_defaults(fn=cmd_delete)

    label = s.add_parser("label", help="add labels to content")
    label.add_argument("digest")
    label.add_argument("labels", nargs="*")
    label.set_defaults(fn=cmd_label)
