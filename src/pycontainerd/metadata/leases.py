"""Leases: named, labelled holds on resources that the garbage collector respects.

Resources are typed as containerd types them: ``content`` (a digest), ``ingests`` (an
ingest ref) and ``snapshots/<snapshotter>`` (a snapshot key).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pycontainerd import digests, identifiers, leases
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound, NotImplemented_
from pycontainerd.metadata import namespaces as nsstore

CONTENT = "content"
INGESTS = "ingests"
SNAPSHOTS = "snapshots"


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    type: str


def validate_resource(res: Resource) -> Resource:
    """Check a resource's type and id; returns it with a canonical id.

    Raises:
        InvalidArgument: malformed type or id; NotImplemented_: unknown type.
    """
    keys = res.type.split("/")
    kind = keys[0]
    if kind in (CONTENT, INGESTS):
        if len(keys) != 1:
            raise InvalidArgument(f"invalid resource type {res.type}")
        if kind == CONTENT:
            try:
                digests.parse(res.id)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"invalid content resource id {res.id}: {exc.message}"
                ) from exc
    elif kind == SNAPSHOTS:
        if len(keys) != 2 or not keys[1]:
            raise InvalidArgument(f"invalid snapshot resource type {res.type}")
    else:
        raise NotImplemented_(f"resource type {res.type} not supported yet")
    return res


def _labels(labels: Mapping[str, str]) -> str:
    for k, v in labels.items():
        identifiers.validate_label(k, v)
    return json.dumps(dict(labels), sort_keys=True)


def _exists(conn: sqlite3.Connection, ns: str, lease_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (ns, lease_id)
    ).fetchone()
    return row is not None


def create(conn: sqlite3.Connection, ns: str, lease_id: str, labels: Mapping[str, str]) -> Lease:
    """Raises InvalidArgument (no id, bad labels) or AlreadyExists."""
    if not lease_id:
        raise InvalidArgument("lease id must be provided")
    encoded = _labels(labels)
    nsstore.ensure(conn, ns)
    if _exists(conn, ns, lease_id):
        raise AlreadyExists(f"lease {identifiers.go_quote(lease_id)}")
    now = time.time_ns()
    conn.execute(
        "INSERT INTO leases(namespace, id, created_at, labels) VALUES (?, ?, ?, ?)",
        (ns, lease_id, now, encoded),
    )
    return Lease(lease_id, now, dict(labels))


def delete(conn: sqlite3.Connection, ns: str, lease_id: str) -> None:
    """Raises NotFound."""
    cur = conn.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (ns, lease_id))
    if cur.rowcount == 0:
        raise NotFound(f"lease {identifiers.go_quote(lease_id)}")


def list_all(conn: sqlite3.Connection, ns: str) -> list[Lease]:
    rows = conn.execute(
        "SELECT id, created_at, labels FROM leases WHERE namespace = ? ORDER BY created_at, id",
        (ns,),
    )
    return [Lease(i, c, json.loads(lb)) for i, c, lb in rows]


def _require(conn: sqlite3.Connection, ns: str, lease_id: str) -> None:
    if not _exists(conn, ns, lease_id):
        raise NotFound(f"lease {identifiers.go_quote(lease_id)}")


def add_resource(conn: sqlite3.Connection, ns: str, lease_id: str, res: Resource) -> None:
    """Raises NotFound (no such lease), InvalidArgument, NotImplemented_."""
    _require(conn, ns, lease_id)
    validate_resource(res)
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources(namespace, lease, type, id) VALUES (?, ?, ?, ?)",
        (ns, lease_id, res.type, res.id),
    )


def delete_resource(conn: sqlite3.Connection, ns: str, lease_id: str, res: Resource) -> None:
    _require(conn, ns, lease_id)
    validate_resource(res)
    conn.execute(
        "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
        (ns, lease_id, res.type, res.id),
    )


def list_resources(conn: sqlite3.Connection, ns: str, lease_id: str) -> list[Resource]:
    _require(conn, ns, lease_id)
    rows = conn.execute(
        "SELECT id, type FROM lease_resources WHERE namespace = ? AND lease = ? ORDER BY type, id",
        (ns, lease_id),
    )
    return [Resource(i, t) for i, t in rows]


def hold(conn: sqlite3.Connection, ns: str, type_: str, object_id: str) -> bool:
    """Add an object to the call's lease, if it has one. Returns whether it did.

    Raises:
        NotFound: the call names a lease that does not exist.
    """
    lease_id = leases.current()
    if not lease_id:
        return False
    if not _exists(conn, ns, lease_id):
        raise NotFound("lease does not exist")
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources(namespace, lease, type, id) VALUES (?, ?, ?, ?)",
        (ns, lease_id, type_, object_id),
    )
    return True


def release(conn: sqlite3.Connection, ns: str, type_: str, object_id: str) -> None:
    """Drop an object from the call's lease, if it has one."""
    lease_id = leases.current()
    if lease_id:
        conn.execute(
            "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
            (ns, lease_id, type_, object_id),
        )
