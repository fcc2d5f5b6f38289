"""Who to wake when the queue or a node's placements change, so work moves at once.

The placement loop places when an attempt is queued, a report frees room or a
node registers (:meth:`Wakeups.queue_changed`), not on its next poll; a node's
Connect sessions send an assignment as soon as its placement commits
(:meth:`Wakeups.placed_on`). The polls stay as a safety net (a wake-up is lost
if the process that changed the queue is not the one placing), bounded by
:class:`~strata.provisioner.settings.ProvisionerSettings`.

The events live in this process only: it holds for one provisioner process,
which is what runs today. Several replicas sharing the schema would need the
change announced across processes (Postgres ``LISTEN``/``NOTIFY`` on commit)
for a request queued by one to be placed and delivered by another at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator


class Wakeups:
    """The placement loop's event and one event per connected session, by node."""

    def __init__(self) -> None:
        self._queue = asyncio.Event()
        self._sessions: dict[str, set[asyncio.Event]] = {}

    def queue_changed(self) -> None:
        """Something waiting may fit now: an attempt queued, room freed, a node arrived."""
        self._queue.set()

    async def until_queue_changed(self, timeout: float) -> None:
        """Wait for :meth:`queue_changed` (since the last wait) or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.wait()
        self._queue.clear()

    def placed_on(self, node_ids: Iterable[str]) -> None:
        """Placements (or cancellations) of these nodes committed: wake their sessions."""
        for node_id in node_ids:
            for event in self._sessions.get(node_id, ()):
                event.set()

    @contextlib.contextmanager
    def session(self, node_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``node_id`` has something new, while the session lasts.

        The session clears it before it reads the node's placements, so a placement
        committed during the read wakes it again."""
        event = asyncio.Event()
        self._sessions.setdefault(node_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._sessions[node_id]
            events.discard(event)
            if not events:
                del self._sessions[node_id]
