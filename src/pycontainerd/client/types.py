"""Plain values the client's image, content and registry APIs exchange.

These are frozen dataclasses, never protobuf messages, so that callers (and the
registry client) can build, compare and hash them freely. ``Descriptor`` follows the
OCI image spec's descriptor (``descriptor.md``); ``Image`` is containerd's image record.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pycontainerd._api.containerd.services.images.v1 import images_pb2
from pycontainerd._api.containerd.types import descriptor_pb2


@dataclass(frozen=True, slots=True)
class DescriptorPlatform:
    """The ``platform`` member of an index entry (OCI image-index.md)."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a blob is, which blob, and how long it is."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: DescriptorPlatform | None = None

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON form (``mediaType``, ``digest``, ``size`` …)."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            plat: dict[str, Any] = {
                "architecture": self.platform.architecture,
                "os": self.platform.os,
            }
            if self.platform.os_version:
                plat["os.version"] = self.platform.os_version
            if self.platform.os_features:
                plat["os.features"] = list(self.platform.os_features)
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        """Parse an OCI JSON descriptor. Raises KeyError/TypeError on a malformed one."""
        plat = obj.get("platform")
        platform = None
        if isinstance(plat, Mapping):
            platform = DescriptorPlatform(
                os=str(plat.get("os", "")),
                architecture=str(plat.get("architecture", "")),
                variant=str(plat.get("variant", "")),
                os_version=str(plat.get("os.version", "")),
                os_features=tuple(str(f) for f in plat.get("os.features", ()) or ()),
            )
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=str(obj["digest"]),
            size=int(obj["size"]),
            annotations=dict(obj.get("annotations") or {}),
            platform=platform,
        )

    def to_proto(self) -> descriptor_pb2.Descriptor:
        return descriptor_pb2.Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=self.size,
            annotations=dict(self.annotations),
        )

    @classmethod
    def from_proto(cls, pb: descriptor_pb2.Descriptor) -> Descriptor:
        return cls(pb.media_type, pb.digest, pb.size, dict(pb.annotations))


def _timestamp(ts: Any) -> datetime.datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=datetime.UTC)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Image:
    """An image record: a name pointing at a root descriptor (index or manifest)."""

    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None

    def to_proto(self) -> images_pb2.Image:
        return images_pb2.Image(
            name=self.name, target=self.target.to_proto(), labels=dict(self.labels)
        )

    @classmethod
    def from_proto(cls, pb: images_pb2.Image) -> Image:
        return cls(
            name=pb.name,
            target=Descriptor.from_proto(pb.target),
            labels=dict(pb.labels),
            created_at=_timestamp(pb.created_at),
            updated_at=_timestamp(pb.updated_at),
        )
