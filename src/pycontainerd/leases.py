"""The lease a call works under, carried in a context variable like the namespace.

Clients send it in the ``containerd-lease`` gRPC header; objects written during the
call are added to the lease so the garbage collector keeps them while it lives.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

GRPC_HEADER = "containerd-lease"
TTRPC_HEADER = "containerd-lease-ttrpc"
# Labels with meaning to the garbage collector.
LABEL_EXPIRE = "containerd.io/gc.expire"
LABEL_FLAT = "containerd.io/gc.flat"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("lease", default=None)


def current() -> str | None:
    return _current.get()


def set_current(lease: str | None) -> contextvars.Token[str | None]:
    return _current.set(lease)


def reset(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def with_lease(lease: str | None) -> Iterator[None]:
    token = _current.set(lease)
    try:
        yield
    finally:
        _current.reset(token)
