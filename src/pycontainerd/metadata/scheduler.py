"""The garbage collection scheduler (containerd's ``io.containerd.gc.v1.scheduler``).

A collection runs ``startup_delay`` after start, then whenever ``mutation_threshold``
metadata changes or ``deletion_threshold`` deletions (0 disables) have happened since
the last one, ``schedule_delay`` after the trigger; never more often than keeps the
time spent collecting under ``pause_threshold`` of the time between collections. A
caller that deletes with ``sync`` asks for one now and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass

from pycontainerd.errdefs import InvalidArgument
from pycontainerd.metadata.db import DB
from pycontainerd.metadata.gc import Collector, Stats

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``100ms``, ``1m30s``, ``0``) in seconds. Raises InvalidArgument."""
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise InvalidArgument(f"invalid duration {text!r}")
    return total


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    mutation_threshold: int = 100
    schedule_delay: str = "0ms"
    startup_delay: str = "100ms"


class Scheduler:
    def __init__(self, db: DB, collector: Collector, config: SchedulerConfig) -> None:
        if not 0 < config.pause_threshold <= 0.5:
            raise InvalidArgument("gc pause_threshold must be in (0, 0.5]")
        self._db = db
        self._collector = collector
        self._config = config
        self._schedule_delay = parse_duration(config.schedule_delay)
        self._startup_delay = parse_duration(config.startup_delay)
        self._mutations = 0
        self._deletions = 0
        self._trigger = asyncio.Event()
        self._waiters: list[asyncio.Future[Stats]] = []
        self._task: asyncio.Task[None] | None = None
        self.last_stats: Stats | None = None
        self.collections = 0
        self._collected = asyncio.Condition()
        db.add_mutation_listener(self._on_mutation)
        db.add_deletion_listener(self._on_deletion)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gc-scheduler")

    def _on_mutation(self) -> None:
        self._mutations += 1
        if self._mutations >= self._config.mutation_threshold > 0:
            self._trigger.set()

    def _on_deletion(self) -> None:
        self._deletions += 1
        if self._deletions >= self._config.deletion_threshold > 0:
            self._trigger.set()

    async def schedule_and_wait(self) -> Stats:
        """Run a collection as soon as possible and return its statistics."""
        fut: asyncio.Future[Stats] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._trigger.set()
        return await fut

    async def _run(self) -> None:
        if self._startup_delay:
            # a caller that needs a collection now does not wait for the start-up delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_for_waiter(), self._startup_delay)
        self._trigger.set()
        next_allowed = 0.0
        while True:
            await self._trigger.wait()
            if not self._waiters:
                if self._schedule_delay:
                    await asyncio.sleep(self._schedule_delay)
                pause = next_allowed - time.monotonic()
                if pause > 0:
                    # wakes early if someone needs a collection now
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wait_for_waiter(), pause)
            self._trigger.clear()
            waiters, self._waiters = self._waiters, []
            self._mutations = self._deletions = 0
            t0 = time.monotonic()
            try:
                stats = await self._collector.collect()
            except Exception as exc:
                logger.exception("garbage collection failed")
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            elapsed = time.monotonic() - t0
            next_allowed = time.monotonic() + elapsed / self._config.pause_threshold
            self.last_stats = stats
            self.collections += 1
            for w in waiters:
                if not w.done():
                    w.set_result(stats)
            async with self._collected:
                self._collected.notify_all()

    async def wait_for_collection(self, after: int) -> None:
        """Return once more than ``after`` collections have run."""
        async with self._collected:
            await self._collected.wait_for(lambda: self.collections > after)

    async def _wait_for_waiter(self) -> None:
        while not self._waiters:
            self._trigger.clear()
            await self._trigger.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for w in self._waiters:
            if not w.done():
                w.cancel()
