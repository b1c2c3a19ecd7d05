"""The image store: a name pointing at a target descriptor, with labels, per namespace."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from pycontainerd import digests, identifiers
from pycontainerd.errdefs import AlreadyExists, InvalidArgument, NotFound
from pycontainerd.metadata import namespaces as nsstore
from pycontainerd.sansio import filters


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def image_fields(img: Image) -> filters.Adaptor:
    def field(path: tuple[str, ...]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "name":
            return img.name, bool(img.name)
        if head == "target" and len(path) >= 2:
            if path[1] == "digest":
                return img.target.digest, bool(img.target.digest)
            if path[1] == "mediatype":
                return img.target.media_type, bool(img.target.media_type)
        if head in ("labels", "annotations"):
            mapping = img.labels if head == "labels" else img.target.annotations
            key = ".".join(path[1:])
            if not mapping or key not in mapping:
                return "", False
            return mapping[key], True
        return "", False

    return field


def validate(img: Image) -> None:
    """Raises InvalidArgument, naming the field, as containerd does."""
    if not img.name:
        raise InvalidArgument("image name must not be empty")
    for k, v in img.labels.items():
        try:
            identifiers.validate_label(k, v)
        except InvalidArgument as exc:
            raise InvalidArgument(f"image.Labels: {exc.message}") from exc
    t = img.target
    try:
        digests.parse(t.digest)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"Target.Digest {identifiers.go_quote(t.digest)} invalid: {exc.message}"
        ) from exc
    if t.size <= 0:
        raise InvalidArgument("Target.Size must be greater than zero")
    if not t.media_type:
        raise InvalidArgument("Target.MediaType must be set")


_COLUMNS = "name, media_type, digest, size, annotations, labels, created_at, updated_at"


def _row(row: tuple[str, str, str, int, str, str, int, int]) -> Image:
    name, mt, dgst, size, ann, labels, created, updated = row
    return Image(
        name, Descriptor(mt, dgst, size, json.loads(ann)), json.loads(labels), created, updated
    )


def get(conn: sqlite3.Connection, ns: str, name: str) -> Image:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM images WHERE namespace = ? AND name = ?", (ns, name)
    ).fetchone()
    if row is None:
        raise NotFound(f"image {identifiers.go_quote(name)}")
    return _row(row)


def list_all(conn: sqlite3.Connection, ns: str) -> list[Image]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM images WHERE namespace = ? ORDER BY name", (ns,))
    return [_row(r) for r in rows]


def _write(conn: sqlite3.Connection, ns: str, img: Image) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO images(namespace, name, media_type, digest, size, annotations, "
        "labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ns,
            img.name,
            img.target.media_type,
            img.target.digest,
            img.target.size,
            json.dumps(dict(img.target.annotations), sort_keys=True),
            json.dumps(dict(img.labels), sort_keys=True),
            img.created_at,
            img.updated_at,
        ),
    )


def create(conn: sqlite3.Connection, ns: str, img: Image) -> Image:
    """Raises InvalidArgument or AlreadyExists."""
    validate(img)
    nsstore.ensure(conn, ns)
    exists = conn.execute(
        "SELECT 1 FROM images WHERE namespace = ? AND name = ?", (ns, img.name)
    ).fetchone()
    if exists:
        raise AlreadyExists(f"image {identifiers.go_quote(img.name)}")
    now = time.time_ns()
    img = replace(img, created_at=now, updated_at=now)
    _write(conn, ns, img)
    return img


def update(conn: sqlite3.Connection, ns: str, img: Image, fieldpaths: Sequence[str]) -> Image:
    """Update by field mask (``labels[.k]``, ``annotations[.k]``, ``target``) or whole.

    Raises:
        InvalidArgument (no name, unknown path, invalid result), NotFound.
    """
    if not img.name:
        raise InvalidArgument("image name is required for update")
    current = get(conn, ns, img.name)
    if fieldpaths:
        labels = dict(current.labels)
        target = current.target
        annotations = dict(target.annotations)
        for path in fieldpaths:
            if path.startswith("labels."):
                key = path.removeprefix("labels.")
                labels[key] = img.labels.get(key, "")
            elif path.startswith("annotations."):
                key = path.removeprefix("annotations.")
                annotations[key] = img.target.annotations.get(key, "")
            elif path == "labels":
                labels = dict(img.labels)
            elif path == "target":
                target = img.target
                annotations = dict(img.target.annotations)
            elif path == "annotations":
                annotations = dict(img.target.annotations)
            else:
                raise InvalidArgument(
                    f"cannot update {identifiers.go_quote(path)} field on image "
                    f"{identifiers.go_quote(img.name)}"
                )
        updated = Image(
            img.name,
            replace(target, annotations={k: v for k, v in annotations.items() if v}),
            {k: v for k, v in labels.items() if v},
        )
    else:
        updated = img
    validate(updated)
    updated = replace(updated, created_at=current.created_at, updated_at=time.time_ns())
    _write(conn, ns, updated)
    return updated


def delete(conn: sqlite3.Connection, ns: str, name: str) -> None:
    """Raises NotFound."""
    cur = conn.execute("DELETE FROM images WHERE namespace = ? AND name = ?", (ns, name))
    if cur.rowcount == 0:
        raise NotFound(f"image {identifiers.go_quote(name)}")
