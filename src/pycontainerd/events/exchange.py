"""The event exchange: publish, forward and subscribe, with containerd's rules.

Published events get the caller's namespace and a UTC timestamp; forwarded envelopes
(from shims and other daemons) must already carry both. Topics are ``/``-separated
identifiers (``/namespaces/create``). Subscribers receive, in order, every envelope that
matches their filters; a subscriber that falls ``max_backlog`` events behind is
dropped with an error rather than holding memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from google.protobuf import any_pb2, message

from pycontainerd import identifiers, namespaces, typeurl
from pycontainerd.errdefs import InvalidArgument, NotFound, Unavailable
from pycontainerd.sansio import filters

logger = logging.getLogger(__name__)

DEFAULT_MAX_BACKLOG = 10_000


@dataclass(frozen=True, slots=True)
class Envelope:
    timestamp_ns: int
    namespace: str
    topic: str
    event: any_pb2.Any

    def field(self, path: tuple[str, ...]) -> tuple[str, bool]:
        """Filter adaptor: ``namespace``, ``topic`` and ``event.<field>``."""
        if not path:
            return "", False
        head = path[0]
        if head == "namespace":
            return self.namespace, bool(self.namespace)
        if head == "topic":
            return self.topic, bool(self.topic)
        if head == "event":
            try:
                decoded = typeurl.unmarshal_any(self.event)
            except (NotFound, message.DecodeError):
                return "", False
            return typeurl.field_value(decoded, path[1:])
        return "", False


def validate_topic(topic: str) -> None:
    """Raises InvalidArgument unless the topic is ``/`` followed by identifiers."""
    try:
        if not topic:
            raise InvalidArgument("must not be empty")
        if topic[0] != "/":
            raise InvalidArgument("must start with '/'")
        if len(topic) == 1:
            raise InvalidArgument("must have at least one component")
        for component in topic[1:].split("/"):
            try:
                identifiers.validate(component)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"failed validation on component {identifiers.go_quote(component)}: "
                    f"{exc.message}"
                ) from exc
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"envelope topic {identifiers.go_quote(topic)}: {exc.message}"
        ) from exc


class _Subscriber:
    __slots__ = ("filter", "overflowed", "queue")

    def __init__(self, flt: filters.Filter, max_backlog: int) -> None:
        self.filter = flt
        # One slot more than the backlog for the ``None`` that ends the stream.
        self.queue: asyncio.Queue[Envelope | None] = asyncio.Queue(max_backlog + 1)
        self.overflowed = False


class Exchange:
    """Broadcasts envelopes to subscribers. All methods run on the event loop."""

    def __init__(self, max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._max_backlog = max_backlog

    async def publish(self, topic: str, event: message.Message) -> None:
        """Publish an event in the current namespace. ``event`` may already be an Any.

        Raises:
            FailedPrecondition / InvalidArgument: no valid namespace, or a bad topic.
        """
        try:
            ns = namespaces.required()
        except InvalidArgument as exc:
            raise InvalidArgument(f"failed publishing event: {exc.message}") from exc
        validate_topic(topic)
        payload = event if isinstance(event, any_pb2.Any) else typeurl.marshal_any(event)
        self._broadcast(Envelope(time.time_ns(), ns, topic, payload))

    async def forward(self, envelope: Envelope) -> None:
        """Forward an envelope made elsewhere (a shim, another daemon).

        Raises:
            InvalidArgument: bad namespace, bad topic or no timestamp.
        """
        try:
            identifiers.validate(envelope.namespace)
        except InvalidArgument as exc:
            raise InvalidArgument(f"event envelope has invalid namespace: {exc.message}") from exc
        validate_topic(envelope.topic)
        if envelope.timestamp_ns == 0:
            raise InvalidArgument("timestamp must be set on forwarded event")
        self._broadcast(envelope)

    def _broadcast(self, envelope: Envelope) -> None:
        for sub in list(self._subscribers):
            if not sub.filter.match(envelope.field):
                continue
            try:
                if sub.queue.qsize() >= self._max_backlog:
                    raise asyncio.QueueFull
                sub.queue.put_nowait(envelope)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._subscribers.discard(sub)
                logger.warning(
                    "dropping event subscriber: more than %d events behind", self._max_backlog
                )

    @contextlib.asynccontextmanager
    async def subscribe(
        self, filter_strings: Iterable[str] = ()
    ) -> AsyncIterator[AsyncIterator[Envelope]]:
        """Subscribe for the duration of the ``async with`` block.

        The subscription is registered before the block starts, so no event published
        after entering is missed.

        Raises:
            InvalidArgument: a filter does not parse (on entry).
            Unavailable: while iterating, if this subscriber fell too far behind.
        """
        try:
            flt = filters.parse_all(list(filter_strings))
        except InvalidArgument as exc:
            raise InvalidArgument(f"failed parsing subscription filters: {exc.message}") from exc
        sub = _Subscriber(flt, self._max_backlog)
        self._subscribers.add(sub)
        try:
            yield self._drain(sub)
        finally:
            self._subscribers.discard(sub)

    async def _drain(self, sub: _Subscriber) -> AsyncIterator[Envelope]:
        while True:
            if sub.overflowed and sub.queue.empty():
                raise Unavailable("event subscriber fell too far behind and was dropped")
            envelope = await sub.queue.get()
            if envelope is None:
                return
            yield envelope

    def begin_shutdown(self) -> None:
        """End every subscription stream (after what is queued) so the server can stop."""
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
