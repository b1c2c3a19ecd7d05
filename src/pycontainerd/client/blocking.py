"""The blocking facade: the asyncio client driven from a private event-loop thread.

``Client`` mirrors ``AsyncClient`` call for call: coroutine methods block and return
their result, async iterators become iterators, async context managers become context
managers, and feature APIs (``client.images`` …) are wrapped the same way. The async
client is the typed reference; this facade is for scripts and shells.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

from pycontainerd.client.aio import AsyncAPI, AsyncClient

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread, for one blocking client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="pycontainerd-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.run(_anext(agen))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                # The loop may already be stopped when a generator is dropped late.
                with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                    self.run(aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _anext(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


async def _await(awaitable: Any) -> Any:
    return await awaitable


class _BlockingContext:
    def __init__(self, target: AbstractAsyncContextManager[Any], runner: _LoopThread) -> None:
        self._target = target
        self._runner = runner

    def __enter__(self) -> Any:
        return _convert(self._runner.run(_await(self._target.__aenter__())), self._runner)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._runner.run(_await(self._target.__aexit__(exc_type, exc, tb)))  # type: ignore[no-any-return]


def _convert(value: Any, runner: _LoopThread) -> Any:
    if inspect.isawaitable(value):
        return _convert(runner.run(_await(value)), runner)
    if isinstance(value, AsyncIterator):
        return runner.iterate(value)
    if isinstance(value, AbstractAsyncContextManager):
        return _BlockingContext(value, runner)
    if isinstance(value, AsyncAPI):
        return Blocking(value, runner)
    if isinstance(value, list):
        return [_convert(v, runner) for v in value]
    return value


class Blocking:
    """Wraps an async API object so that its methods block."""

    def __init__(self, target: Any, runner: _LoopThread) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return _convert(attr, self._runner)

        def call(*args: Any, **kwargs: Any) -> Any:
            return _convert(attr(*args, **kwargs), self._runner)

        call.__doc__ = attr.__doc__
        call.__name__ = name
        return call

    def __dir__(self) -> list[str]:
        return [n for n in dir(self._target) if not n.startswith("_")]


class Client(Blocking):
    """A blocking connection to a daemon: ``with Client(address, namespace=...) as c``.

    Same arguments, methods and errors as ``AsyncClient`` (see its docstrings), each call
    blocking until it completes. Not for sharing between threads that use different leases.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        namespace: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        runner = _LoopThread()
        super().__init__(AsyncClient(address, namespace=namespace, timeout=timeout), runner)
        self.aio: AsyncClient = self._target

    @property
    def address(self) -> str:
        return self.aio.address

    @property
    def namespace(self) -> str:
        return self.aio.namespace

    @namespace.setter
    def namespace(self, value: str) -> None:
        self.aio.namespace = value

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of ``self.aio`` on this client's loop and return its result."""
        return self._runner.run(coro)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the loop thread; the client is unusable after."""
        if self._runner.loop.is_closed():
            return
        self._runner.run(self.aio.close())
        self._runner.stop()
