"""A request to stop one attempt's worker, from whoever decides it must stop.

The provisioner's cancellation asks through :meth:`Stop.ask`, with the grace it
names; the worker's wait (:func:`strata.agent.worker.run_in_worker`) then sends
SIGTERM, so the task can clean up, and SIGKILL once the grace has passed. The
first request wins: a worker is stopped once, for one reason.
"""

from __future__ import annotations

import asyncio

from strata.agent.domain.outcome import StopKind


class Stop:
    """One worker's stop request: why, and how long it may take to exit cleanly."""

    def __init__(self) -> None:
        self._asked = asyncio.Event()
        self.kind = StopKind.CANCELLED
        self.message = ""
        self.grace = 0.0

    def ask(self, kind: StopKind, message: str, grace: float) -> None:
        """Stop the worker for ``kind`` (``message`` says why), killing it after ``grace``
        seconds; a later request changes nothing."""
        if self._asked.is_set():
            return
        self.kind, self.message, self.grace = kind, message, max(grace, 0.0)
        self._asked.set()

    @property
    def asked(self) -> bool:
        return self._asked.is_set()

    async def wait(self) -> None:
        """Until a stop is asked."""
        await self._asked.wait()
