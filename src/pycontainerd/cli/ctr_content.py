"""``pyctr content``: list, read, write, label and remove blobs and ingests (ctr 1.6)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from pycontainerd.cli.ctr_run import parse_labels, table
from pycontainerd.cli.shared import (
    add_registry_flags,
    format_labels,
    human_size,
    progress_reporter,
    registry_options,
)
from pycontainerd.client import Client
from pycontainerd.client.content import ContentInfo, IngestStatus
from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import ContainerdError, InvalidArgument, NotFound
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Matcher, parse_platform
from pycontainerd.remotes.fetcher import fetch
from pycontainerd.remotes.pusher import push_blob, push_manifest
from pycontainerd.remotes.reference import parse_reference
from pycontainerd.remotes.resolver import RegistrySession


def human_age(when: datetime.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.datetime.now(datetime.UTC) - when).total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} seconds"


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


def cmd_fetch(c: Client, args: argparse.Namespace) -> None:
    # Late imports: ctr_images imports this module.
    platforms = [parse_platform(p) for p in args.platform or []]
    with progress_reporter() as progress:
        # As ctr's ``client.Fetch``: every blob of the image for the platforms, under a
        # lease, and an image record pointing at it; no snapshots.
        img = c.run(
            c.aio.pull(
                args.ref,
                unpack=False,
                platform=Matcher(platforms) if platforms else None,
                all_platforms=args.all_platforms,
                progress=progress,
                **registry_options(args),
            )
        )
    if args.label:
        c.images.set_labels(img.name, parse_labels(args.label))
    print(f"{img.name}: {img.target.digest}")


JSON_TYPES = frozenset({mt.OCI_INDEX, mt.OCI_MANIFEST, mt.OCI_CONFIG})
MANIFEST_MEDIA_TYPES = frozenset(
    {mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST}
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def validate(data: bytes, kind: str) -> None:
    """Check edited bytes against ``kind``: ``json``, or a JSON media type (an OCI or
    Docker manifest, index or config: a JSON object, with the members that type needs and
    a ``mediaType`` that agrees).

    Raises:
        InvalidArgument: ``data`` is not a valid ``kind``, or ``kind`` is not something
            that can be checked.
    """
    if kind != "json" and not kind.endswith("+json") and kind not in JSON_TYPES:
        raise InvalidArgument(f"cannot validate against {kind!r}: only json and JSON media types")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"edited content is not valid JSON: {exc}") from None
    if kind == "json":
        return
    if not isinstance(doc, dict):
        raise InvalidArgument(f"edited content is not a JSON object, as {kind} must be")
    declared = doc.get("mediaType")
    if declared is not None and declared != kind:
        raise InvalidArgument(f"edited content says mediaType {declared!r}, not {kind!r}")
    needed: tuple[str, ...] = ()
    if kind in (mt.OCI_MANIFEST, mt.DOCKER_MANIFEST):
        needed = ("schemaVersion", "config", "layers")
    elif kind in (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST):
        needed = ("schemaVersion", "manifests")
    missing = [k for k in needed if k not in doc]
    if missing:
        raise InvalidArgument(f"edited {kind} lacks {', '.join(missing)}")


def cmd_edit(c: Client, args: argparse.Namespace) -> None:
    editor = args.editor or os.environ.get("EDITOR", "")
    if not editor:
        raise InvalidArgument("editor is required (--editor or $EDITOR)")
    data = b"".join(c.content.read(args.digest))
    fd, path = tempfile.mkstemp(prefix="edit-", dir=os.environ.get("XDG_RUNTIME_DIR") or None)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # As ctr: the editor is a shell command line, given the file as its last word.
        rc = subprocess.run(["sh", "-c", f"{editor} {shlex.quote(path)}"], check=False)
        if rc.returncode != 0:
            raise ContainerdError(f"editor {editor!r} exited with status {rc.returncode}")
        with open(path, "rb") as f:
            edited = f.read()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if args.validate:
        validate(edited, args.validate)
    ref = "edit-" + args.digest
    # A stale ingest under this ref would be resumed into the new bytes: drop it.
    with contextlib.suppress(NotFound):
        c.content.abort(ref)
    desc = c.content.write_blob(ref, edited)
    print(desc.digest)


async def _fetch_object(args: argparse.Namespace, out: IO[bytes]) -> None:
    parsed = parse_reference(args.ref)
    async with RegistrySession(parsed, **registry_options(args)) as session:
        desc = await session.resolve()
        async for chunk in fetch(session, desc):
            out.write(chunk)
    out.flush()


def cmd_fetch_object(c: Client, args: argparse.Namespace) -> None:
    # As ctr: the reference is resolved and what it names is written out; the object
    # and hint arguments are accepted and not used.
    c.run(_fetch_object(args, sys.stdout.buffer))


async def _push_object(c: Client, args: argparse.Namespace) -> Descriptor:
    parsed = parse_reference(args.ref)
    info = await c.aio.content.info(args.digest)
    desc = Descriptor(args.media_type, args.digest, info.size)
    async with RegistrySession(parsed, **registry_options(args)) as session:
        if args.media_type in MANIFEST_MEDIA_TYPES:
            # A registry takes manifests by reference, under the tag (or their digest).
            data = await c.aio.content.read_all(args.digest)
            await push_manifest(session, desc, data, parsed.tag)
        else:
            await push_blob(
                session, desc, lambda: c.aio.content.read(args.digest), dict(info.labels)
            )
    return desc


def cmd_push_object(c: Client, args: argparse.Namespace) -> None:
    if not DIGEST.fullmatch(args.digest):
        raise InvalidArgument(f"{args.digest!r}: not a digest")
    desc = c.run(_push_object(c, args))
    print(f"Pushed {desc.digest} {desc.media_type}")


LAYER_REF_PREFIX = "containerd.io/gc.ref.content.l."
CONTENT_REF_PREFIX = "containerd.io/gc.ref.content."


def is_layer_label(key: str) -> bool:
    """A manifest's reference to a layer: ``gc.ref.content.l.<i>``, or the legacy
    ``gc.ref.content.<i>`` form where index 0 was the config."""
    if key.startswith(LAYER_REF_PREFIX):
        return True
    rest = key.removeprefix(CONTENT_REF_PREFIX)
    return rest != key and rest.isdigit() and rest != "0"


def cmd_prune_references(c: Client, args: argparse.Namespace) -> None:
    for info in c.content.list():
        keys = sorted(k for k in info.labels if is_layer_label(k))
        for key in keys:
            print(f"{'would remove' if args.dry else 'removing'} {key} from {info.digest}")
        if keys and not args.dry:
            c.content.update_labels(info.digest, dict.fromkeys(keys, ""))
    if args.dry:
        return
    # As ctr: deleting a lease runs a collection, which now takes the unreferenced layers.
    lease = c.leases.create(expire=datetime.timedelta(hours=1))
    c.leases.delete(lease.id, sync=not args.async_)


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

    # Late import: ctr_images imports this module.
    fetch_cmd = s.add_parser("fetch", help="fetch all content for an image into containerd")
    add_registry_flags(fetch_cmd)
    fetch_cmd.add_argument("--all-platforms", action="store_true", help="fetch every platform")
    fetch_cmd.add_argument("--label", action="append", default=[], help="labels for the image")
    fetch_cmd.add_argument("ref")
    fetch_cmd.set_defaults(fn=cmd_fetch)

    edit = s.add_parser("edit", help="edit a blob and return a new digest")
    edit.add_argument(
        "--validate", default="", help="validate the result against a format (json, mediatype)"
    )
    edit.add_argument("--editor", default="", help="editor command (default $EDITOR)")
    edit.add_argument("digest")
    edit.set_defaults(fn=cmd_edit)

    fetch_object = s.add_parser("fetch-object", help="retrieve objects from a remote")
    add_registry_flags(fetch_object)
    fetch_object.add_argument("ref", help="the remote reference")
    fetch_object.add_argument("objects", nargs="*", help="object and hints (unused, as ctr)")
    fetch_object.set_defaults(fn=cmd_fetch_object)

    push_object = s.add_parser("push-object", help="push an object to a remote")
    add_registry_flags(push_object)
    push_object.add_argument("ref", help="the remote reference (its tag names a manifest)")
    push_object.add_argument("digest")
    push_object.add_argument("media_type", metavar="type")
    push_object.set_defaults(fn=cmd_push_object)

    prune = s.add_parser("prune", help="prunes content from the content store")
    prune_sub = prune.add_subparsers(dest="what", required=True)
    refs = prune_sub.add_parser(
        "references", help="prunes preference labels from the content store (layers only)"
    )
    refs.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="allow garbage collection to cleanup asynchronously",
    )
    refs.add_argument("--dry", action="store_true", help="just show what would be removed")
    refs.set_defaults(fn=cmd_prune_references)
