"""The namespace store: names with labels, and the rule that only empty ones go."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pycontainerd import identifiers
from pycontainerd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


# What a namespace can hold, in the order containerd names it in the "must be empty"
# message: (what to call it, a query counting it). Each capability that stores
# namespaced objects adds its row here together with its migration.
_HOLDINGS: tuple[tuple[str, str], ...] = (
    ("images", "SELECT 1 FROM images WHERE namespace = ? LIMIT 1"),
    ("blobs", "SELECT 1 FROM blobs WHERE namespace = ? LIMIT 1"),
    ("containers", "SELECT 1 FROM containers WHERE namespace = ? LIMIT 1"),
)
# Snapshots are named per snapshotter: 'snapshots on "overlayfs" snapshotter'.
_SNAPSHOTTERS_QUERY = "SELECT DISTINCT snapshotter FROM snapshots WHERE namespace = ? ORDER BY 1"


def _validate_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        try:
            identifiers.validate_label(k, v)
        except InvalidArgument as exc:
            raise InvalidArgument(f"namespace.Labels: {exc.message}") from exc


def exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone() is not None


def ensure(conn: sqlite3.Connection, name: str) -> None:
    """Create the namespace if it is missing (objects create their namespace)."""
    conn.execute(
        "INSERT OR IGNORE INTO namespaces(name, created_at) VALUES (?, ?)",
        (name, time.time_ns()),
    )


def create(conn: sqlite3.Connection, name: str, labels: Mapping[str, str]) -> Namespace:
    """Raises InvalidArgument (bad name or labels) or AlreadyExists."""
    identifiers.validate(name)
    _validate_labels(labels)
    if exists(conn, name):
        raise AlreadyExists(f"namespace {identifiers.go_quote(name)}")
    ensure(conn, name)
    conn.executemany(
        "INSERT INTO namespace_labels(namespace, key, value) VALUES (?, ?, ?)",
        [(name, k, v) for k, v in labels.items() if v],
    )
    return Namespace(name, {k: v for k, v in labels.items() if v})


def get_labels(conn: sqlite3.Connection, name: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT key, value FROM namespace_labels WHERE namespace = ? ORDER BY key", (name,)
    )
    return dict(rows.fetchall())


def get(conn: sqlite3.Connection, name: str) -> Namespace:
    """Raises NotFound."""
    if not exists(conn, name):
        raise NotFound(f"namespace {identifiers.go_quote(name)}")
    return Namespace(name, get_labels(conn, name))


def list_all(conn: sqlite3.Connection) -> list[Namespace]:
    names = [r[0] for r in conn.execute("SELECT name FROM namespaces ORDER BY name")]
    labels: dict[str, dict[str, str]] = {n: {} for n in names}
    for ns, k, v in conn.execute("SELECT namespace, key, value FROM namespace_labels"):
        labels[ns][k] = v
    return [Namespace(n, labels[n]) for n in names]


def set_label(conn: sqlite3.Connection, name: str, key: str, value: str) -> None:
    """Set (or, with an empty value, remove) one label; as in containerd, this creates
    a missing namespace. Raises InvalidArgument."""
    _validate_labels({key: value})
    identifiers.validate(name)
    ensure(conn, name)
    if value:
        conn.execute(
            "INSERT INTO namespace_labels(namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            (name, key, value),
        )
    else:
        conn.execute("DELETE FROM namespace_labels WHERE namespace = ? AND key = ?", (name, key))


def replace_labels(conn: sqlite3.Connection, name: str, labels: Mapping[str, str]) -> None:
    """Replace all labels (creating a missing namespace, as set_label does)."""
    _validate_labels(labels)
    identifiers.validate(name)
    ensure(conn, name)
    conn.execute("DELETE FROM namespace_labels WHERE namespace = ?", (name,))
    conn.executemany(
        "INSERT INTO namespace_labels(namespace, key, value) VALUES (?, ?, ?)",
        [(name, k, v) for k, v in labels.items() if v],
    )


def holdings(conn: sqlite3.Connection, name: str) -> list[str]:
    """What kinds of object the namespace still holds, in containerd's wording."""
    found = []
    for what, query in _HOLDINGS:
        if conn.execute(query, (name,)).fetchone():
            found.append(what)
    for (snapshotter,) in conn.execute(_SNAPSHOTTERS_QUERY, (name,)).fetchall():
        found.append(f"snapshots on {identifiers.go_quote(snapshotter)} snapshotter")
    return found


def delete(conn: sqlite3.Connection, name: str) -> None:
    """Raises NotFound, or FailedPrecondition while the namespace holds anything."""
    if not exists(conn, name):
        raise NotFound(f"namespace {identifiers.go_quote(name)}")
    held = holdings(conn, name)
    if held:
        raise FailedPrecondition(
            f"namespace {identifiers.go_quote(name)} must be empty, "
            f"but it still has {', '.join(held)}"
        )
    conn.execute("DELETE FROM namespaces WHERE name = ?", (name,))
