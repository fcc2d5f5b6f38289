"""Workers spawned before their attempts, so an attempt starts without waiting for a
new interpreter.

Spawning a worker (a fresh interpreter importing the agent's worker module and
its libraries) takes most of a second on a busy machine: the largest part of the
time from an upstream task's end to the next one running. :class:`Spares` keeps
up to ``size`` started workers waiting for a job and hands each new attempt one
of them, spawning its replacement in the background. A spare counts as ready
once it says its imports are done (a worker still starting would make the
attempt wait for the rest of its start); with none ready (a burst took them all,
or ``size`` is 0) the attempt's worker is spawned on the spot.

A spare is started before anyone knows which bundle its attempt will run: the
job it is handed names the bundle's folder, which it puts on ``sys.path`` before
importing the entrypoint, so one set of spares serves every bundle.

A spare runs one attempt and exits, like a worker spawned for it: a process that
ran user code (modules it imported, threads it left, memory it holds, a crash it
half survived) is never handed another attempt, and its usage and captured output
are the attempt's alone. A spare that died while waiting is discarded.
"""

from __future__ import annotations

import asyncio
import collections

import structlog

from strata.agent.worker import Job, Worker, booted, start_worker

log = structlog.stdlib.get_logger(__name__)


class Spares:
    """Up to ``size`` workers started ahead, each used once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ready: collections.deque[Worker] = collections.deque()
        self._filling: asyncio.Task[None] | None = None
        self._closed = False

    def fill(self) -> None:
        """Start spawning spares up to the size, unless that is under way."""
        if self._closed or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.create_task(self._fill(), name="spare workers")

    async def start(self, given: Job) -> Worker:
        """A worker running ``given``: a spare if one is ready and alive, else a new one."""
        while self._ready:
            worker = self._ready.popleft()
            if worker.hand(given):
                self.fill()
                return worker
            log.warning("a spare worker died while waiting; discarded")
            await asyncio.to_thread(worker.discard)
        self.fill()
        worker = await asyncio.to_thread(start_worker)
        if not worker.hand(given):
            log.warning("a worker died before it got its job")
        return worker

    async def close(self) -> None:
        """Stop spawning and kill the spares (the agent is stopping)."""
        self._closed = True
        if self._filling is not None:
            await asyncio.gather(self._filling, return_exceptions=True)
        while self._ready:
            await asyncio.to_thread(self._ready.popleft().discard)

    async def _fill(self) -> None:
        try:
            await self._spawn_until_full()
        except Exception:
            # Attempts still start (a worker is spawned for each); the next one tries again.
            log.exception("spare workers could not be started")

    async def _spawn_until_full(self) -> None:
        while not self._closed and len(self._ready) < self._size:
            worker = await asyncio.to_thread(start_worker)
            up = await asyncio.to_thread(booted, worker)
            if self._closed or not up:
                await asyncio.to_thread(worker.discard)
                if not up:
                    log.warning("a spare worker died while starting; trying again later")
                return
            self._ready.append(worker)
