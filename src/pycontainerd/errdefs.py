"""Error kinds shared by every layer, mapped to gRPC codes only at the edge.

containerd's errors are sentinel values wrapped with context, so a message reads
``namespace "x": not found``; the kind's own text is the suffix. We keep that shape
(``str(NotFound('namespace "x"')) == 'namespace "x": not found'``) so that the text a
client prints is the text containerd would have sent. This module imports nothing from
gRPC: sans-I/O code and stores raise these without pulling in the transport.
"""

from __future__ import annotations

import asyncio
import enum
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


class Code(enum.IntEnum):
    """gRPC status code numbers, which ttrpc's ``google.rpc.Status`` carries too."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


# containerd's errdefs/grpc.go mapping, both ways.
KIND_CODES: tuple[tuple[type[ContainerdError], Code], ...] = (
    (InvalidArgument, Code.INVALID_ARGUMENT),
    (NotFound, Code.NOT_FOUND),
    (AlreadyExists, Code.ALREADY_EXISTS),
    (FailedPrecondition, Code.FAILED_PRECONDITION),
    (Unavailable, Code.UNAVAILABLE),
    (NotImplemented_, Code.UNIMPLEMENTED),
    (OutOfRange, Code.OUT_OF_RANGE),
)
_KIND_FOR_CODE: dict[int, type[ContainerdError]] = {code: kind for kind, code in KIND_CODES}


def status_of(exc: BaseException) -> tuple[Code, str]:
    """The status code and message containerd would send for this error."""
    if isinstance(exc, ContainerdError):
        for kind, code in KIND_CODES:
            if isinstance(exc, kind):
                return code, str(exc)
        return Code.UNKNOWN, str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return Code.CANCELLED, "context canceled"
    if isinstance(exc, TimeoutError):
        return Code.DEADLINE_EXCEEDED, "context deadline exceeded"
    return Code.UNKNOWN, str(exc) or type(exc).__name__


def from_status(code: int, message: str) -> ContainerdError:
    """The error kind for a non-OK status, its message stripped of the kind's suffix so
    that ``str()`` of the result reads exactly as the server's message."""
    kind = _KIND_FOR_CODE.get(code, Unknown)
    suffix = ": " + kind.kind
    if message == kind.kind:
        message = ""
    elif message.endswith(suffix):
        message = message[: -len(suffix)]
    return kind(message)
