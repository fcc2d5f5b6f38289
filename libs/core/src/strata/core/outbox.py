"""The transactional outbox: an event commits with the state change it announces.

A service never publishes to Kafka from inside a transaction. It calls
:func:`enqueue` on the transaction's connection, which inserts the sealed envelope
into ``<schema>.outbox`` and sends ``NOTIFY``; Postgres delivers the notification
only at commit, so a rolled-back transaction publishes nothing and a committed one
wakes the relay at once. :class:`OutboxRelay` then puts the rows on Kafka and
deletes them. A crash anywhere between commit and delete leaves the row in the
table, so the event is published (again) later: delivery is at-least-once and
consumers de-duplicate by event id (:mod:`strata.core.inbox`).

The table, created by each service's first migration::

    CREATE TABLE outbox (
        id bigserial PRIMARY KEY, topic text NOT NULL, key text NOT NULL,
        event_id uuid NOT NULL UNIQUE, payload bytea NOT NULL,
        headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());

Rows are deleted once published rather than marked sent: the table stays as small
as the backlog, the relay's read is an index scan from the first id, and nothing
needs vacuuming or archiving. Kafka is the record of what was sent.

Order. The relay reads rows in id order and sends them with one idempotent
producer (acks=all), keyed by the envelope's key, so events of one key reach their
partition in id order. For id order to be the order of the state changes, enqueue
after the statement that locks the entity (``UPDATE runs ... WHERE id = $1``):
then two transactions on one entity get their outbox ids in commit order. Rows
that commit out of id order are not skipped: the relay always reads from the
lowest remaining id and deletes exactly the ids it sent, never a range.

Replicas. Each service replica may run a relay; exactly one leads per schema, by
holding ``pg_try_advisory_lock`` on a dedicated connection that it also uses to
LISTEN, read and delete. If that connection dies the leader's next statement
fails, so it stops before another replica (which retries the lock every
``standby_retry`` seconds) takes over; at most the batch in flight is published
twice, which consumers drop by event id. Scaling past one leader: hash keys into
N buckets (``hashtext(key) % N`` as a column), one advisory lock per bucket, and
let replicas lead disjoint buckets; per-key order still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any, Protocol

import asyncpg
import structlog
from aiokafka.errors import KafkaError

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.migrations import DbConnection, quote_schema

log = structlog.stdlib.get_logger(__name__)

RELAY_LOCK_CLASS = 0x5354_5231
"""First key of the relay's two-key advisory lock; the second is ``hashtext(schema)``."""

RECOVERABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError)
"""Failures after which the relay gives up leadership, waits, and starts again."""


class EventProducer(Protocol):
    """What the relay needs of a Kafka producer (``aiokafka.AIOKafkaProducer`` fits)."""

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes,
        headers: list[tuple[str, bytes]],
    ) -> asyncio.Future[Any]: ...


def channel(schema: str) -> str:
    """The NOTIFY channel that wakes the relay of ``schema``."""
    quote_schema(schema)
    return f"strata_outbox_{schema}"


async def enqueue(conn: DbConnection, schema: str, topic: str, *envelopes: Envelope) -> None:
    """Add ``envelopes`` to the outbox of ``schema`` inside the caller's open transaction.

    One round trip whatever the number of envelopes. Each is published to
    ``topic`` with its own ``key``; its ``trace_context`` becomes Kafka headers.
    """
    quoted = quote_schema(schema)
    if not conn.is_in_transaction():
        raise RuntimeError(
            "enqueue must run inside the transaction of the state change it announces: "
            "call it within `async with conn.transaction():`"
        )
    if not topic:
        raise ValueError("topic is empty: name the Kafka topic the events go to")
    keys, ids, payloads, headers = [], [], [], []
    for envelope in envelopes:
        keys.append(_key_of(envelope))
        ids.append(_event_id_of(envelope))
        payloads.append(envelope.SerializeToString())
        headers.append(json.dumps(dict(envelope.trace_context)))
    await conn.execute(
        f"WITH added AS (INSERT INTO {quoted}.outbox (topic, key, event_id, payload, headers) "
        "SELECT $1, k, e, p, h::jsonb FROM unnest($2::text[], $3::uuid[], $4::bytea[], $5::text[])"
        " AS t(k, e, p, h) RETURNING 1) SELECT pg_notify($6, '')",
        topic,
        keys,
        ids,
        payloads,
        headers,
        channel(schema),
    )


def _key_of(envelope: Envelope) -> str:
    if not envelope.key:
        raise ValueError(
            f"envelope.key is empty (event {envelope.event_id}): "
            "the outbox publishes by key to keep per-key order; seal(..., key=...)"
        )
    return envelope.key


def _event_id_of(envelope: Envelope) -> uuid.UUID:
    try:
        return uuid.UUID(envelope.event_id)
    except ValueError:
        raise ValueError(f"envelope.event_id {envelope.event_id!r} is not a UUID") from None


class OutboxRelay:
    """Publishes the outbox of one schema to Kafka; run one per service replica.

    ``await relay.run()`` runs until cancelled. The producer is started and
    stopped by the caller and must be idempotent with acks=all
    (``strata.core.kafka.producer``). The relay holds one pool connection for its
    lifetime, as leader or standby. ``batch_size`` rows are read, produced and
    deleted per round trip; ``sweep_interval`` bounds how long a lost
    notification can delay an event; ``standby_retry`` is how often a standby
    asks for the lock, and the pause after a failure.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        producer: EventProducer,
        *,
        batch_size: int = 1000,
        sweep_interval: float = 2.0,
        standby_retry: float = 1.0,
    ) -> None:
        self._quoted = quote_schema(schema)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for name, seconds in (("sweep_interval", sweep_interval), ("standby_retry", standby_retry)):
            if seconds <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")
        self.schema = schema
        self._pool = pool
        self._producer = producer
        self._batch_size = batch_size
        self._sweep_interval = sweep_interval
        self._standby_retry = standby_retry
        self.leading = False
        """True while this relay holds the schema's lock and publishes."""
        self.published = 0
        """Events this relay put on Kafka (and deleted), for metrics and tests."""

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
        """Publish batches on ``conn`` (which holds the lock), sleeping on LISTEN between them.

        The wake-up is cleared before each read, so a notification that arrives
        during a read or a publish makes the next wait return at once. The sweep
        timeout catches the backlog at start and notifications lost on reconnect.
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
            while True:
                wake.clear()
                if await self._relay_batch(conn) < self._batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self._sweep_interval)
        finally:
            self.leading = False
            conn.remove_termination_listener(on_notify)
            with contextlib.suppress(*RECOVERABLE):
                await conn.remove_listener(name, on_notify)

    async def _relay_batch(self, conn: DbConnection) -> int:
        """Publish the oldest rows, wait for every ack, delete exactly those rows."""
        rows = await conn.fetch(
            f"SELECT id, topic, key, payload, headers FROM {self._quoted}.outbox "
            "ORDER BY id LIMIT $1",
            self._batch_size,
        )
        if not rows:
            return 0
        acks = [
            await self._producer.send(
                row["topic"], row["payload"], key=row["key"].encode(), headers=_headers(row)
            )
            for row in rows
        ]
        await asyncio.gather(*acks)
        await conn.execute(
            f"DELETE FROM {self._quoted}.outbox WHERE id = ANY($1::bigint[])",
            [row["id"] for row in rows],
        )
        self.published += len(rows)
        return len(rows)


def _headers(row: asyncpg.Record) -> list[tuple[str, bytes]]:
    stored: dict[str, str] = json.loads(row["headers"])
    return [(name, value.encode()) for name, value in stored.items()]
