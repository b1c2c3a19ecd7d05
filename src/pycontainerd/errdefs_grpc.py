"""errdefs at the gRPC edge: error kinds to status codes and back, as containerd maps them.

On the server side every method handler is wrapped once (``wrap_handler``; for grpc.aio
servers through ``ContainerdInterceptor``), so service methods never ``try``: the wrapper
sets the call's namespace and lease from the ``containerd-namespace`` and
``containerd-lease`` headers and turns a raised error kind into
``context.abort(code, message)``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from pycontainerd import errdefs, leases, namespaces

logger = logging.getLogger(__name__)

_STATUS_CODES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def to_grpc(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message containerd would send for this error."""
    code, message = errdefs.status_of(exc)
    return _STATUS_CODES[code], message


def from_grpc(err: grpc.aio.AioRpcError | grpc.RpcError) -> errdefs.ContainerdError:
    """Rebuild the error kind from a status; ``str()`` of it reads as the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or ""
    return errdefs.from_status(code.value[0], details)


def _headers_from(metadata: Any) -> tuple[str | None, str | None]:
    """The namespace and lease a call carries in its gRPC metadata."""
    ns = lease = None
    for key, value in metadata or ():
        if key == namespaces.GRPC_HEADER:
            ns = str(value)
        elif key == leases.GRPC_HEADER:
            lease = str(value)
    return ns, lease


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code, message = to_grpc(exc)
    if code == grpc.StatusCode.UNKNOWN and not isinstance(exc, errdefs.ContainerdError):
        logger.error("unexpected error in RPC", exc_info=exc)
    await context.abort(code, message)


def _wrap_unary(fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        ns, lease = _headers_from(context.invocation_metadata())
        token = namespaces.set_current(ns)
        lease_token = leases.set_current(lease)
        try:
            return await fn(request, context)
        except (errdefs.ContainerdError, TimeoutError) as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            leases.reset(lease_token)
            namespaces.reset(token)

    return handler


def _wrap_stream(
    fn: Callable[[Any, Any], AsyncIterator[Any]],
) -> Callable[[Any, Any], Awaitable[None]]:
    """A coroutine handler writing the service's generator to the call.

    Not a generator itself: grpc leaves a cancelled generator handler suspended at its
    ``yield`` until garbage collection, so a service's ``finally`` (a content writer
    releasing its ref's lock) would run late. Here cancellation reaches ``context.write``
    and the service's generator is closed at once.
    """

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        ns, lease = _headers_from(context.invocation_metadata())
        token = namespaces.set_current(ns)
        lease_token = leases.set_current(lease)
        responses = fn(request, context)
        try:
            async for item in responses:
                await context.write(item)
        except (errdefs.ContainerdError, TimeoutError) as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
            leases.reset(lease_token)
            namespaces.reset(token)

    return handler


def wrap_handler(handler: Any) -> Any:
    """``handler`` (a grpc.RpcMethodHandler) with namespace, lease and error mapping."""
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary), **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream), **kwargs)
    return handler


class ContainerdInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """``wrap_handler`` for every call of a grpc.aio server."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler)
