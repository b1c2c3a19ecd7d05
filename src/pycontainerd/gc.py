"""Garbage collection rules, without I/O: nodes, label references, mark.

containerd's collector is a tri-colour mark over resource nodes followed by a sweep.
Roots are what users hold (images, containers, unexpired leases and ingests, objects
labelled ``containerd.io/gc.root``); references follow ``containerd.io/gc.ref.*``
labels and snapshot parents. ``metadata.gc`` scans the database into these nodes and
sweeps what is left unmarked.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

LABEL_ROOT = "containerd.io/gc.root"
LABEL_CONTENT_REF = "containerd.io/gc.ref.content"
LABEL_SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"


class Resource(enum.IntEnum):
    CONTENT = 1
    SNAPSHOT = 2
    CONTAINER = 3
    TASK = 4
    LEASE = 5
    INGEST = 6
    # A lease with gc.flat holds its resources but not what they reference.
    CONTENT_FLAT = 7
    SNAPSHOT_FLAT = 8


_BASE = {Resource.CONTENT_FLAT: Resource.CONTENT, Resource.SNAPSHOT_FLAT: Resource.SNAPSHOT}


@dataclass(frozen=True, slots=True)
class Node:
    type: Resource
    namespace: str
    key: str

    def base(self) -> Node:
        """The node with any flat marker removed (what the sweep compares against)."""
        base = _BASE.get(self.type)
        return self if base is None else Node(base, self.namespace, self.key)


def is_root(labels: Mapping[str, str]) -> bool:
    return LABEL_ROOT in labels


def label_refs(namespace: str, labels: Mapping[str, str]) -> Iterator[Node]:
    """Nodes referenced by ``gc.ref`` labels, in label order.

    ``containerd.io/gc.ref.content`` and keys under it separated by ``.`` or ``/``
    name content digests; ``containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]``
    name snapshot keys of that snapshotter.
    """
    for key in sorted(labels):
        value = labels[key]
        if key.startswith(LABEL_CONTENT_REF):
            rest = key[len(LABEL_CONTENT_REF) :]
            if rest == "" or rest[0] in "./":
                yield Node(Resource.CONTENT, namespace, value)
        elif key.startswith(LABEL_SNAPSHOT_REF):
            snapshotter = key[len(LABEL_SNAPSHOT_REF) :].split("/", 1)[0]
            yield Node(Resource.SNAPSHOT, namespace, f"{snapshotter}/{value}")


def parse_expire(value: str) -> datetime.datetime | None:
    """An RFC 3339 time, or None when it does not parse (containerd ignores those)."""
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when


def expired(labels: Mapping[str, str], now: datetime.datetime) -> bool:
    value = labels.get(LABEL_EXPIRE)
    if value is None:
        return False
    when = parse_expire(value)
    return when is not None and now > when


def mark(roots: Iterable[Node], references: Callable[[Node], Iterable[Node]]) -> set[Node]:
    """Everything reachable from ``roots`` (flat markers removed from the result)."""
    seen: set[Node] = set()
    reachable: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        reachable.add(node.base())
        stack.extend(n for n in references(node) if n not in seen)
    return reachable
