"""Error kinds shared by every layer, mapped to gRPC codes only at the edge.

containerd's errors are sentinel values wrapped with context, so a message reads
``namespace "x": not found``; the kind's own text is the suffix. We keep that shape
(``str(NotFound('namespace "x"')) == 'namespace "x": not found'``) so that the text a
client prints is the text containerd would have sent. This module imports nothing from
gRPC: sans-I/O code and stores raise these without pulling in the transport.
"""

from __future__ import annotations

from typing import ClassVar


class ContainerdError(Exception):
    """Base of every error kind. ``kind`` is containerd's sentinel text."""

    kind: ClassVar[str] = "unknown"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        if not self.message:
            return self.kind
        if self.message == self.kind or self.message.endswith(": " + self.kind):
            return self.message
        return f"{self.message}: {self.kind}"


class Unknown(ContainerdError):
    kind = "unknown"


class InvalidArgument(ContainerdError):
    kind = "invalid argument"


class NotFound(ContainerdError):
    kind = "not found"


class AlreadyExists(ContainerdError):
    kind = "already exists"


class FailedPrecondition(ContainerdError):
    kind = "failed precondition"


class Unavailable(ContainerdError):
    kind = "unavailable"


class NotImplemented_(ContainerdError):
    kind = "not implemented"


Unimplemented = NotImplemented_


class OutOfRange(ContainerdError):
    """An offset outside the object (containerd answers these with OUT_OF_RANGE)."""

    kind = "out of range"

    def __str__(self) -> str:  # containerd sends these bare, without a kind suffix
        return self.message or self.kind


ALL_KINDS: tuple[type[ContainerdError], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    NotImplemented_,
    OutOfRange,
    Unknown,
)
