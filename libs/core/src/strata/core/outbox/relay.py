"""The relay: publishes one schema's outbox to Kafka; one leader per schema.

Replicas. Each service replica may run a relay; exactly one leads per schema, by
holding ``pg_try_advisory_lock`` on a dedicated connection that it also uses to
LISTEN, read and delete. If that connection dies the leader's next statement
fails, so it stops before another replica (which retries the lock every
``standby_retry`` seconds) takes over; at most the batch in flight is published
twice, which consumers drop by event id.

A round reads the oldest rows whose (topic, key) has no parked row, sends them in
id order, and then settles each row on its own: acknowledged rows are deleted
(never sent again), refused rows count an attempt and are parked after
``max_attempts``, rows hit by an outage only note the error. After the first
failure of a key in a round, its later rows wait for the next round, so they never
overtake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from strata.core.bus.publisher import event_headers
from strata.core.metrics import Metrics
from strata.core.migrations import DbConnection, quote_schema
from strata.core.outbox.parked import park
from strata.core.outbox.writer import channel

log = structlog.stdlib.get_logger(__name__)

RELAY_LOCK_CLASS = 0x5354_5231
"""First key of the relay's two-key advisory lock; the second is ``hashtext(schema)``."""

RECOVERABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""Failures of the relay's Postgres connection: it gives up leadership, waits, starts again."""


class TopicMissingError(Exception):
    """The cluster answered and has no such topic (or does not let this producer see it)."""


REFUSALS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    TopicMissingError,
)
"""What the broker says about the record itself; retrying will not change it. Any
other error is taken for an outage, which never parks a row."""


@dataclass
class _Round:
    """What one read-send-settle round did."""

    read: int = 0
    acked: list[int] = field(default_factory=list)
    refused: list[tuple[asyncpg.Record, str]] = field(default_factory=list)
    outages: list[tuple[asyncpg.Record, str]] = field(default_factory=list)


class OutboxRelay:
    """Publishes the outbox of one schema to Kafka; run one per service replica.

    ``await relay.run()`` runs until cancelled. ``producer`` is the bus's started
    producer (:attr:`strata.core.bus.Bus.producer`, idempotent with acks=all). The
    relay holds one pool connection for its lifetime, as leader or standby.
    ``batch_size`` rows are read, produced and settled per round; ``sweep_interval``
    bounds how long a lost notification can delay an event; ``standby_retry`` is
    how often a standby asks for the lock, and the pause after a failure;
    ``max_attempts`` is how many refusals park a row.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        producer: AIOKafkaProducer,
        *,
        metrics: Metrics | None = None,
        batch_size: int = 1000,
        sweep_interval: float = 2.0,
        standby_retry: float = 1.0,
        max_attempts: int = 5,
    ) -> None:
        self._quoted = quote_schema(schema)
        for name, count in (("batch_size", batch_size), ("max_attempts", max_attempts)):
            if count < 1:
                raise ValueError(f"{name} must be at least 1, got {count}")
        for name, seconds in (("sweep_interval", sweep_interval), ("standby_retry", standby_retry)):
            if seconds <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")
        self.schema = schema
        self._pool = pool
        self._producer = producer
        self._metrics = metrics or Metrics()
        self._batch_size = batch_size
        self._sweep_interval = sweep_interval
        self._standby_retry = standby_retry
        self._max_attempts = max_attempts
        self.leading = False
        """True while this relay holds the schema's lock and publishes."""
        self.published = 0
        """Events this relay put on Kafka (and deleted), for tests; the metric counts too."""

    async def run(self) -> None:
        """Wait to lead, then publish until cancelled; start over after a failure."""
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await self._await_leadership(conn)
                    await self._lead(conn)
            except RECOVERABLE as exc:
                log.warning("outbox relay failed", schema=self.schema, error=repr(exc))
                await asyncio.sleep(self._standby_retry)

    async def _await_leadership(self, conn: DbConnection) -> None:
        while True:
            if await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", RELAY_LOCK_CLASS, self.schema
            ):
                return
            await asyncio.sleep(self._standby_retry)

    async def _lead(self, conn: DbConnection) -> None:
        """Publish rounds on ``conn`` (which holds the lock), sleeping on LISTEN between them.

        The wake-up is cleared before each read, so a notification that arrives
        during a round makes the next wait return at once. The sweep timeout
        catches the backlog at start and notifications lost on reconnect. After a
        failure the relay pauses ``standby_retry`` instead, so a refused row is
        retried at that pace until it parks.
        """
        wake = asyncio.Event()

        def on_notify(*_: object) -> None:
            wake.set()

        name = channel(self.schema)
        await conn.add_listener(name, on_notify)
        conn.add_termination_listener(on_notify)
        self.leading = True
        log.info("outbox relay leads", schema=self.schema)
        try:
            await self._count(conn)
            while True:
                wake.clear()
                done = await self._round(conn)
                if done.refused or done.outages:
                    await asyncio.sleep(self._standby_retry)
                elif done.read < self._batch_size:
                    await self._count(conn)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self._sweep_interval)
        finally:
            self.leading = False
            conn.remove_termination_listener(on_notify)
            with contextlib.suppress(*RECOVERABLE):
                await conn.remove_listener(name, on_notify)

    async def _round(self, conn: DbConnection) -> _Round:
        rows = await conn.fetch(
            "SELECT id, topic, key, event_id::text, event_type, payload, headers, attempts"
            f" FROM {self._quoted}.outbox o WHERE NOT EXISTS (SELECT 1 FROM"
            f" {self._quoted}.outbox_parked p WHERE p.topic = o.topic AND p.key = o.key)"
            " ORDER BY id LIMIT $1",
            self._batch_size,
        )
        done = _Round(read=len(rows))
        if rows:
            await self._send(rows, done)
            await self._settle(conn, done)
        return done

    async def _send(self, rows: list[asyncpg.Record], done: _Round) -> None:
        """Send ``rows`` in id order, skipping the rest of a key after its first failure."""
        missing = await self._missing_topics({row["topic"] for row in rows})
        held: set[tuple[str, str]] = set()
        pending: list[tuple[asyncpg.Record, asyncio.Future[object]]] = []
        for row in rows:
            slot = (row["topic"], row["key"])
            if slot in held:
                continue
            try:
                if row["topic"] in missing:
                    raise missing[row["topic"]]
                pending.append((row, await self._publish(row)))
            except Exception as exc:  # every failure is settled below, none is lost
                held.add(slot)
                _note(done, row, exc)
        results = await asyncio.gather(*(ack for _, ack in pending), return_exceptions=True)
        for (row, _), result in zip(pending, results, strict=True):
            if isinstance(result, Exception):
                _note(done, row, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                done.acked.append(row["id"])

    async def _publish(self, row: asyncpg.Record) -> asyncio.Future[object]:
        """Hand one row to the producer with the bus's headers, read from columns."""
        trace: dict[str, str] = json.loads(row["headers"])
        ack: asyncio.Future[object] = await self._producer.send(
            row["topic"],
            row["payload"],
            key=row["key"].encode(),
            headers=event_headers(row["event_type"], row["event_id"], trace),
        )
        return ack

    async def _missing_topics(self, topics: Collection[str]) -> dict[str, Exception]:
        """The topics of ``topics`` the cluster says it does not have, with the error to note.

        aiokafka's own send waits ``request_timeout_ms`` for an unknown topic's
        metadata (auto-creation is off), then fails the same way as in an outage;
        asking the cluster for its topic list tells the two apart at once. A
        cluster that does not answer makes every unknown topic an outage.
        """
        client = self._producer.client
        unknown = [t for t in topics if client.cluster.partitions_for_topic(t) is None]
        if not unknown:
            return {}
        try:
            cluster = await client.fetch_all_metadata()
        except KafkaError as exc:
            return dict.fromkeys(unknown, exc)
        known = cluster.topics()
        return {
            topic: TopicMissingError(
                f"topic {topic!r} does not exist (or this producer may not describe it)"
            )
            for topic in unknown
            if topic not in known
        }

    async def _settle(self, conn: DbConnection, done: _Round) -> None:
        """Delete what Kafka acknowledged; count refusals, parking the exhausted; note outages."""
        quoted = self._quoted
        if done.acked:
            await conn.execute(f"DELETE FROM {quoted}.outbox WHERE id = ANY($1)", done.acked)
            self.published += len(done.acked)
            self._metrics.outbox_published.labels(self.schema).inc(len(done.acked))
            self._metrics.outbox_backlog.labels(self.schema).dec(len(done.acked))
        refused = [(row, error, row["attempts"] + 1) for row, error in done.refused]
        exhausted = [f for f in refused if f[2] >= self._max_attempts]
        rest = [f for f in refused if f[2] < self._max_attempts]
        rest += [(row, error, row["attempts"]) for row, error in done.outages]
        if exhausted:
            await park(conn, self.schema, *_columns(exhausted))
            log.error("outbox rows parked", schema=self.schema, events=_ids(exhausted))
            await self._count(conn)
        if rest:
            await conn.execute(
                f"UPDATE {quoted}.outbox o SET last_error = f.error, attempts = f.attempts"
                " FROM unnest($1::bigint[], $2::text[], $3::int[]) AS f(id, error, attempts)"
                " WHERE o.id = f.id",
                *_columns(rest),
            )
            log.warning("outbox rows not published", schema=self.schema, events=_ids(rest))

    async def _count(self, conn: DbConnection) -> None:
        """Set the backlog and parked gauges from the tables (cheap when caught up)."""
        counts = await conn.fetchrow(
            f"SELECT (SELECT count(*) FROM {self._quoted}.outbox) AS backlog,"
            f" (SELECT count(*) FROM {self._quoted}.outbox_parked) AS parked"
        )
        assert counts is not None  # a SELECT without FROM returns one row
        self._metrics.outbox_backlog.labels(self.schema).set(counts["backlog"])
        self._metrics.outbox_parked.labels(self.schema).set(counts["parked"])


def _note(done: _Round, row: asyncpg.Record, exc: Exception) -> None:
    text, name = str(exc), type(exc).__name__
    error = text if name in text else f"{name}: {text}"
    (done.refused if isinstance(exc, REFUSALS) else done.outages).append((row, error))


def _columns(
    failures: list[tuple[asyncpg.Record, str, int]],
) -> tuple[list[int], list[str], list[int]]:
    return (
        [row["id"] for row, _, _ in failures],
        [error for _, error, _ in failures],
        [attempts for _, _, attempts in failures],
    )


def _ids(failures: list[tuple[asyncpg.Record, str, int]]) -> list[str]:
    return [f"{row['event_id']}: {error}" for row, error, _ in failures]
