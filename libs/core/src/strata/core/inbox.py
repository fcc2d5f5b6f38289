"""The consumer inbox: handle each event once, whatever Kafka redelivers.

Kafka and the outbox deliver at least once, so a consumer sees some events twice
(a relay restart, a consumer rebalance before the offset commit). The consumer
claims the event id in ``<schema>.inbox`` in the same transaction as its own state
change::

    async with conn.transaction():
        if await claim(conn, "scheduler", event.event_id, consumer="run-tracker"):
            await apply_state_change(conn, event)

The first delivery inserts the row and changes state; a redelivery finds the row
and does nothing. If the transaction rolls back, so does the claim, and the next
delivery handles the event. Two consumers racing on one event serialize on the
primary key: the second waits for the first to commit and then sees it claimed.

For a batch, :func:`claim_events` takes ``[(payload, envelope), ...]`` and returns
the events to apply: the first copy of each event id not handled before. A batch
may hold two copies of one event (a relay that restarted before deleting what it
had sent), and applying both would double the state change.

Claims are taken in sorted id order, whatever the order of the batch: two
transactions claiming overlapping batches then lock the shared ids in the same
order, so one waits for the other instead of both deadlocking.

The table, created by the core's migrations (:mod:`strata.core.schema`)::

    CREATE TABLE inbox (
        consumer text NOT NULL, event_id uuid NOT NULL,
        handled_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, event_id));
    CREATE INDEX inbox_handled_at ON inbox (handled_at);

Retention: a row only matters while Kafka can still redeliver its event, i.e.
for the retention of the topics the consumer reads (7 days by default) plus the
longest time a consumer may lag. :func:`prune` deletes older rows; run it daily
with a margin (e.g. twice the topic retention).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TypeVar

import asyncpg

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.migrations import DbConnection, quote_schema

P = TypeVar("P")


async def claim(conn: DbConnection, schema: str, event_id: str, consumer: str) -> bool:
    """Record that ``consumer`` handles ``event_id``; True the first time, False after.

    Must run in the transaction of the consumer's state change.
    """
    return bool(await claim_many(conn, schema, consumer, [event_id]))


async def claim_many(
    conn: DbConnection, schema: str, consumer: str, event_ids: Iterable[str]
) -> set[str]:
    """Claim a batch of event ids in one round trip; return those not handled before.

    For consumers that apply a whole Kafka batch in one transaction. An id given
    twice is claimed once (and returned once, as its last spelling). Rows are
    inserted in sorted id order so overlapping batches cannot deadlock.
    """
    quoted = quote_schema(schema)
    if not consumer:
        raise ValueError("consumer is empty: name the consumer that handles the events")
    if not conn.is_in_transaction():
        raise RuntimeError(
            "claim must run inside the transaction of the consumer's state change: "
            "call it within `async with conn.transaction():`"
        )
    given = {_uuid(event_id): event_id for event_id in event_ids}
    rows = await conn.fetch(
        f"INSERT INTO {quoted}.inbox (consumer, event_id) "
        "SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        sorted(given),
    )
    return {given[row["event_id"]] for row in rows}


async def claim_events(
    conn: DbConnection, schema: str, consumer: str, events: Sequence[tuple[P, Envelope]]
) -> list[tuple[P, Envelope]]:
    """Claim the event ids of a batch; return the events to apply, in batch order.

    Each event id newly claimed is returned once, as its first copy in ``events``;
    later copies, and events handled before, are left out. Must run in the
    transaction of the consumer's state change::

        async with conn.transaction():
            for payload, envelope in await claim_events(conn, schema, "tracker", batch):
                await apply(conn, payload)
    """
    claimed = {
        _uuid(event_id)
        for event_id in await claim_many(
            conn, schema, consumer, (envelope.event_id for _, envelope in events)
        )
    }
    fresh: list[tuple[P, Envelope]] = []
    for payload, envelope in events:
        event_id = _uuid(envelope.event_id)
        if event_id in claimed:
            claimed.discard(event_id)
            fresh.append((payload, envelope))
    return fresh


async def prune(db: asyncpg.Pool | DbConnection, schema: str, older_than: timedelta) -> int:
    """Delete inbox rows handled more than ``older_than`` ago; return how many."""
    quoted = quote_schema(schema)
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, got {older_than}")
    status = await db.execute(
        f"DELETE FROM {quoted}.inbox WHERE handled_at < now() - $1::interval", older_than
    )
    return int(status.split()[-1])


def _uuid(event_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(event_id)
    except (ValueError, TypeError):
        raise ValueError(f"event_id {event_id!r} is not a UUID") from None
