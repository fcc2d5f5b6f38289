"""Where a sender waits for its event to reach the handler, timed at the handler."""

from __future__ import annotations

import asyncio
import time

TIMEOUT = 30.0
"""Longest wait for one event: a guard against a hung run, not part of any figure."""

SETTLE = 0.008
"""Pause after each latency sample of the ``idle`` pace, so every sample meets an idle
pipeline: the broker's fetch waiting, the consumers' loops parked, as on a quiet
dispatch path. It also outlasts an offset commit (Kafka 4's group coordinator holds
each up to ``group.coordinator.append.linger.ms``, 5 ms by default), so a consumer
that commits after each record (commit → handled) starts every sample afresh.
"""


class Arrivals:
    """Futures keyed by a unique id (event id or key), resolved with the handler's clock."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[float]] = {}

    def expect(self, ident: str) -> asyncio.Future[float]:
        """Register before sending, so an arrival faster than the send's return is not lost."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        return future

    def arrived(self, ident: str) -> None:
        """Called by a handler: note the time; unknown ids (warm-up leftovers) are ignored."""
        future = self._waiting.pop(ident, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    async def wait(self, future: asyncio.Future[float], what: str) -> float:
        """The handler's time for ``future``; a clear error after :data:`TIMEOUT` seconds."""
        try:
            return await asyncio.wait_for(future, TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"{what}: no event reached its handler in {TIMEOUT:g} s") from None
