"""The container store: a container's configuration (no process), per namespace.

A container record names its runtime, carries its OCI spec and extensions as opaque
``Any`` values (type URL and bytes, so this layer needs no protobuf), and points at the
image it came from and the snapshot that holds its root filesystem. The record is a
garbage-collection root: it keeps its snapshot and anything its
``containerd.io/gc.ref.*`` labels name (see ``metadata.gc``).

Error messages follow containerd's metadata/containers.go word for word, because they
are what ``ctr`` prints.
"""

from __future__ import annotations

import base64
import datetime
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pycontainerd import identifiers
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from pycontainerd.metadata import namespaces as nsstore
from pycontainerd.sansio import filters


@dataclass
class TypedValue:
    """A ``google.protobuf.Any`` without protobuf in core."""

    type_url: str
    value: bytes


@dataclass
class RuntimeInfo:
    name: str
    options: TypedValue | None = None


@dataclass
class Container:
    id: str
    runtime: RuntimeInfo
    spec: TypedValue | None = None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, TypedValue] = field(default_factory=dict)
    sandbox: str = ""
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


# The fields a whole-object update (no field mask) replaces, as containerd lists them.
_REPLACEABLE = ("labels", "spec", "extensions", "image", "snapshotkey")


def container_fields(c: Container) -> filters.Adaptor:
    """The filter field paths containerd offers for containers: ``id``,
    ``runtime.name``, ``image`` and ``labels.<key>``."""

    def lookup(path: tuple[str, ...]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "id":
            return c.id, bool(c.id)
        if head == "runtime":
            if len(path) > 1 and path[1] == "name":
                return c.runtime.name, bool(c.runtime.name)
            return "", False
        if head == "image":
            return c.image, bool(c.image)
        if head == "labels":
            key = ".".join(path[1:])
            if not c.labels or key not in c.labels:
                return "", False
            return c.labels[key], True
        return "", False

    return lookup


def validate(c: Container) -> None:
    """Check a container as containerd's validateContainer does.

    Raises:
        InvalidArgument: naming the offending field.
    """
    try:
        identifiers.validate(c.id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"container.ID: {exc.message}") from exc
    if any(k == "" for k in c.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length")
    for k, v in c.labels.items():
        try:
            identifiers.validate_label(k, v)
        except InvalidArgument as exc:
            raise InvalidArgument(f"containers.Labels: {exc.message}") from exc
    if not c.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set")
    if c.spec is None:
        raise InvalidArgument("container.Spec must be set")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set")


_COLUMNS = (
    "id, labels, image, runtime_name, runtime_options_type, runtime_options, spec_type, "
    "spec, snapshotter, snapshot_key, extensions, sandbox, created_at, updated_at"
)

_Row = tuple[
    str,
    str,
    str,
    str,
    str | None,
    bytes | None,
    str | None,
    bytes | None,
    str,
    str,
    str,
    str,
    int,
    int,
]


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


# Times are stored as integer nanoseconds; integer arithmetic (not float seconds) keeps
# the microseconds a datetime holds exact across a round trip.
def _to_time(ns: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=ns // 1000)


def _to_ns(when: datetime.datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _typed(type_url: str | None, value: bytes | None) -> TypedValue | None:
    if type_url is None:
        return None
    return TypedValue(type_url, bytes(value or b""))


def _extensions_to_json(extensions: dict[str, TypedValue]) -> str:
    return json.dumps(
        {k: [v.type_url, base64.b64encode(v.value).decode()] for k, v in extensions.items()},
        sort_keys=True,
    )


def _extensions_from_json(text: str) -> dict[str, TypedValue]:
    raw: dict[str, list[str]] = json.loads(text)
    return {k: TypedValue(t, base64.b64decode(v)) for k, (t, v) in raw.items()}


def _from_row(row: _Row) -> Container:
    (cid, labels, image, rt_name, rt_type, rt_value, spec_type, spec_value) = row[:8]
    (snapshotter, snapshot_key, extensions, sandbox, created, updated) = row[8:]
    return Container(
        id=cid,
        runtime=RuntimeInfo(rt_name, _typed(rt_type, rt_value)),
        spec=_typed(spec_type, spec_value),
        labels=json.loads(labels),
        image=image,
        snapshotter=snapshotter,
        snapshot_key=snapshot_key,
        extensions=_extensions_from_json(extensions),
        sandbox=sandbox,
        created_at=_to_time(created),
        updated_at=_to_time(updated),
    )


def _write(conn: sqlite3.Connection, ns: str, c: Container, created_ns: int, now_ns: int) -> None:
    opts = c.runtime.options
    conn.execute(
        f"INSERT OR REPLACE INTO containers(namespace, {_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ns,
            c.id,
            # containerd stores no label with an empty value
            json.dumps({k: v for k, v in c.labels.items() if v}, sort_keys=True),
            c.image,
            c.runtime.name,
            None if opts is None else opts.type_url,
            None if opts is None else opts.value,
            None if c.spec is None else c.spec.type_url,
            None if c.spec is None else c.spec.value,
            c.snapshotter,
            c.snapshot_key,
            _extensions_to_json(c.extensions),
            c.sandbox,
            created_ns,
            now_ns,
        ),
    )


def _exists(conn: sqlite3.Connection, ns: str, cid: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM containers WHERE namespace = ? AND id = ?", (ns, cid)
    ).fetchone()
    return row is not None


def _namespace_has_containers(conn: sqlite3.Connection, ns: str) -> bool:
    row = conn.execute("SELECT 1 FROM containers WHERE namespace = ? LIMIT 1", (ns,)).fetchone()
    return row is not None


def get(conn: sqlite3.Connection, ns: str, id: str) -> Container:
    """Raises NotFound."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?", (ns, id)
    ).fetchone()
    if row is None:
        q = identifiers.go_quote
        raise NotFound(f"container {q(id)} in namespace {q(ns)}")
    return _from_row(row)


def list_all(conn: sqlite3.Connection, ns: str) -> list[Container]:
    """Every container of the namespace, ordered by id (bolt's key order)."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", (ns,))
    return [_from_row(r) for r in rows]


def _now_ns() -> int:
    return _to_ns(datetime.datetime.now(datetime.UTC))


def create(conn: sqlite3.Connection, ns: str, c: Container) -> Container:
    """Store a new container; returns it with its timestamps set.

    Raises:
        InvalidArgument: the container fails validation.
        AlreadyExists: the namespace has a container with this id.
    """
    try:
        validate(c)
    except InvalidArgument as exc:
        raise InvalidArgument(f"create container failed validation: {exc.message}") from exc
    nsstore.ensure(conn, ns)
    if _exists(conn, ns, c.id):
        raise AlreadyExists(f"container {identifiers.go_quote(c.id)}")
    now = _now_ns()
    _write(conn, ns, c, now, now)
    return get(conn, ns, c.id)


def update(conn: sqlite3.Connection, ns: str, c: Container, fieldpaths: Sequence[str]) -> Container:
    """Update the fields named by ``fieldpaths`` from ``c``; see containerd's field mask
    rules: ``labels``, ``labels.<key>``, ``spec``, ``extensions``, ``extensions.<key>``,
    ``image`` and ``snapshotkey``. With no paths, all of those are replaced, and a
    different snapshotter or runtime name is refused (they are immutable).

    Raises:
        InvalidArgument: no id, an unknown or immutable field, or the result is invalid.
        NotFound: no such container.
    """
    q = identifiers.go_quote
    if not c.id:
        raise InvalidArgument("must specify a container id")
    if not _exists(conn, ns, c.id):
        if not _namespace_has_containers(conn, ns):
            raise NotFound(f"cannot update container {q(c.id)} in namespace {q(ns)}")
        raise NotFound(f"container {q(c.id)}")
    current = get(conn, ns, c.id)
    assert current.created_at is not None
    paths = list(fieldpaths)
    if not paths:
        paths = list(_REPLACEABLE)
        if current.snapshotter != c.snapshotter:
            raise InvalidArgument("container.Snapshotter field is immutable")
        if current.runtime.name != c.runtime.name:
            raise InvalidArgument("container.Runtime.Name field is immutable")
    updated = replace(current, labels=dict(current.labels), extensions=dict(current.extensions))
    for path in paths:
        if path.startswith("labels."):
            key = path.removeprefix("labels.")
            updated.labels[key] = c.labels.get(key, "")
        elif path.startswith("extensions."):
            key = path.removeprefix("extensions.")
            # containerd stores the zero Any when the request lacks the key
            updated.extensions[key] = c.extensions.get(key, TypedValue("", b""))
        elif path == "labels":
            updated.labels = dict(c.labels)
        elif path == "spec":
            updated.spec = c.spec
        elif path == "extensions":
            updated.extensions = dict(c.extensions)
        elif path == "image":
            updated.image = c.image
        elif path == "snapshotkey":
            updated.snapshot_key = c.snapshot_key
        else:
            raise InvalidArgument(f"cannot update {q(path)} field on {q(c.id)}")
    try:
        validate(updated)
    except InvalidArgument as exc:
        raise InvalidArgument(f"update failed validation: {exc.message}") from exc
    _write(conn, ns, updated, _to_ns(current.created_at), _now_ns())
    return get(conn, ns, c.id)


def delete(conn: sqlite3.Connection, ns: str, id: str) -> None:
    """Remove the record (not its snapshot: garbage collection does that).

    Raises:
        NotFound: no such container.
    """
    cur = conn.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (ns, id))
    if cur.rowcount == 0:
        if not _namespace_has_containers(conn, ns):
            q = identifiers.go_quote
            raise NotFound(f"cannot delete container {q(id)} in namespace {q(ns)}")
        raise NotFound(f"container {id}")
