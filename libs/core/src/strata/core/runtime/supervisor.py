"""Background work under supervision: a task that dies is logged, counted and restarted.

Each task (the outbox relay, a periodic loop, the dependency watch) runs in its own
asyncio task. An exception ends nothing silently: it is logged with its traceback,
counted in ``strata_background_task_restarts_total``, the service's health turns
NOT_SERVING while the task waits out its backoff, and the task starts again. The
backoff doubles from ``initial`` to ``longest`` and starts over once a run lasted
longer than ``longest`` (it was healthy in between).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from strata.core.metrics import Metrics

log = structlog.stdlib.get_logger(__name__)

Work = Callable[[], Awaitable[None]]
Changed = Callable[[frozenset[str]], Awaitable[None]]
"""Told the names of the tasks that are down, whenever that set changes."""


class Supervisor:
    """Runs named tasks until :meth:`stop`, restarting each one that fails."""

    def __init__(
        self,
        metrics: Metrics,
        on_change: Changed,
        *,
        initial: float = 0.5,
        longest: float = 30.0,
    ) -> None:
        if not 0 < initial <= longest:
            raise ValueError(
                f"backoff must satisfy 0 < initial <= longest, got {initial}, {longest}"
            )
        self._metrics = metrics
        self._on_change = on_change
        self._initial = initial
        self._longest = longest
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: set[str] = set()

    @property
    def down(self) -> frozenset[str]:
        """Tasks waiting to be restarted after a failure."""
        return frozenset(self._down)

    def start(self, name: str, work: Work) -> None:
        """Run ``work`` as task ``name``, restarted whenever it raises."""
        if name in self._tasks:
            raise ValueError(f"a background task named {name!r} runs already")
        self._tasks[name] = asyncio.create_task(self._keep(name, work), name=name)

    async def stop(self) -> None:
        """Cancel every task and wait for each to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self, name: str, work: Work) -> None:
        loop = asyncio.get_running_loop()
        delay = self._initial
        while True:
            began = loop.time()
            try:
                await work()
            except Exception:
                if loop.time() - began > self._longest:
                    delay = self._initial
                log.exception("background task failed, restarting it", task=name, retry_in=delay)
                self._metrics.task_restarts.labels(task=name).inc()
                await self._mark(name, down=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._longest)
                await self._mark(name, down=False)
            else:
                log.info("background task finished", task=name)
                return

    async def _mark(self, name: str, *, down: bool) -> None:
        if down:
            self._down.add(name)
        else:
            self._down.discard(name)
        await self._on_change(self.down)


def every(seconds: float, round_: Work) -> Work:
    """A task that runs ``round_`` again ``seconds`` after each round ended."""

    async def periodic() -> None:
        while True:
            await round_()
            await asyncio.sleep(seconds)

    return periodic
