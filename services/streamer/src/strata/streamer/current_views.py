"""The current version of each feature view, kept in memory for the online read path.

``GetOnlineFeatures`` needs the current version of every view a request names.
Reading it from Postgres cost about half of the call (one query per request), so
each replica keeps what it read, and forgets it when the catalog changes:

- ``ViewStore.apply`` sends a Postgres ``NOTIFY`` (:func:`~strata.streamer.store.
  views_channel`, payload the view's name) in the transaction that stores a new
  version. Postgres delivers it at commit to every listening connection, so every
  replica forgets the view the moment its new version is visible.
- :meth:`CurrentViews.listen` (a supervised loop) holds the ``LISTEN`` connection.
  Entries are kept only while it listens: before it starts, after its connection
  is lost and until it listens again, every read goes to Postgres and nothing is
  kept (a notification sent meanwhile would be missed).
- A read from Postgres that a notification overtook is answered but not kept, so
  an older version is never stored after the news of a newer one.
- Whatever happens, an entry is at most ``max_age`` seconds old: a safety net for
  a notification lost on a connection that died unnoticed (the loop probes it
  every ``probe_every`` seconds).

The staleness rule, then: a replica serves a newly applied version from the
moment the commit's notification reaches it (normally milliseconds after the
commit), and in any case at most ``max_age`` seconds after it. That holds for the
view's ``allowed_groups`` too (they are part of the spec, so narrowing them makes
a new version), and for a deleted view, which ``delete`` names the same way.

Why ``LISTEN``/``NOTIFY`` rather than consuming ``FeatureViewApplied``: every
replica must see every change, which on Kafka means a consumer group per replica;
the event goes outbox, relay, broker, consumer, and waits for Kafka while it is
down; and the catalog lives in Postgres, whose notification arrives at the commit
itself, on a connection the service already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from typing import Any

import asyncpg
import structlog

from strata.core.runtime import ServiceContext
from strata.streamer.store import StoredView, ViewStore, views_channel

log = structlog.stdlib.get_logger(__name__)

MAX_AGE = 5.0
"""Seconds an entry may be served before it is read again, notification or not."""
PROBE_EVERY = 1.0
"""Seconds between checks that the ``LISTEN`` connection still answers."""


class CatalogConnectionLostError(Exception):
    """The ``LISTEN`` connection closed; the supervisor starts listening again."""


class CurrentViews:
    """Current view versions of one replica, forgotten when the catalog says they changed."""

    def __init__(self, *, max_age: float = MAX_AGE, probe_every: float = PROBE_EVERY) -> None:
        if max_age <= 0 or probe_every <= 0:
            raise ValueError(
                f"max_age and probe_every must be positive seconds, got {max_age}, {probe_every}"
            )
        self._max_age = max_age
        self._probe_every = probe_every
        self._entries: dict[str, tuple[float, StoredView]] = {}
        self._listening = False
        self._generation = 0
        """Counts what makes a read in flight unsafe to keep: notifications, listen changes."""
        self.heard = 0
        """Notifications of a changed view received so far."""

    @property
    def listening(self) -> bool:
        """Whether entries are kept (the ``LISTEN`` connection is up)."""
        return self._listening

    async def of(self, store: ViewStore, names: Collection[str]) -> dict[str, StoredView]:
        """The current versions of those of ``names`` that exist, as ``store.current_of``."""
        now = time.monotonic()
        found: dict[str, StoredView] = {}
        missing: list[str] = []
        for name in names:
            entry = self._entries.get(name)
            if entry is not None and now - entry[0] < self._max_age:
                found[name] = entry[1]
            else:
                missing.append(name)
        if missing:
            generation = self._generation
            read = await store.current_of(missing)
            if self._listening and generation == self._generation:
                for name, stored in read.items():
                    self._entries[name] = (now, stored)
            found.update(read)
        return found

    def forget(self, name: str) -> None:
        """``name`` changed: drop its entry, and keep no read that started before."""
        self._generation += 1
        self._entries.pop(name, None)

    async def listen(self, context: ServiceContext) -> None:
        """The service's loop: :meth:`follow` the catalog of the service's schema."""
        await self.follow(context.pool, context.schema)

    async def follow(self, pool: asyncpg.Pool, schema: str) -> None:
        """Hold the ``LISTEN`` connection until cancelled; raise when it is lost."""
        lost = asyncio.Event()

        def changed(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            self.heard += 1
            self.forget(str(payload))

        def closed(_conn: Any) -> None:
            lost.set()

        channel = views_channel(schema)
        async with pool.acquire() as conn:
            await conn.add_listener(channel, changed)
            conn.add_termination_listener(closed)
            self._switch(listening=True)
            log.info("current views kept, following the catalog", channel=channel)
            try:
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self._probe_every)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1")
                raise CatalogConnectionLostError("the catalog's LISTEN connection closed")
            finally:
                self._switch(listening=False)
                conn.remove_termination_listener(closed)
                with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                    await conn.remove_listener(channel, changed)

    def _switch(self, *, listening: bool) -> None:
        self._generation += 1
        self._entries.clear()
        self._listening = listening
