"""The namespace a call works in, carried in a context variable.

Server interceptors set it from the ``containerd-namespace`` gRPC header (or
``containerd-namespace-ttrpc`` on ttrpc); every metadata method starts with
``required()``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from pycontainerd import identifiers
from pycontainerd.errdefs import FailedPrecondition, InvalidArgument

GRPC_HEADER = "containerd-namespace"
TTRPC_HEADER = "containerd-namespace-ttrpc"
ENV_VAR = "CONTAINERD_NAMESPACE"
DEFAULT = "default"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("namespace", default=None)


def current() -> str | None:
    """The namespace of this call, unvalidated, or None."""
    return _current.get()


def required() -> str:
    """The valid namespace of this call.

    Raises:
        FailedPrecondition: no namespace was given.
        InvalidArgument: the namespace is not a valid identifier.
    """
    ns = _current.get()
    if not ns:
        raise FailedPrecondition("namespace is required")
    try:
        identifiers.validate(ns)
    except InvalidArgument as exc:
        raise InvalidArgument(f"namespace validation: {exc}") from exc
    return ns


def set_current(ns: str | None) -> contextvars.Token[str | None]:
    return _current.set(ns)


def reset(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def with_namespace(ns: str | None) -> Iterator[None]:
    token = _current.set(ns)
    try:
        yield
    finally:
        _current.reset(token)
