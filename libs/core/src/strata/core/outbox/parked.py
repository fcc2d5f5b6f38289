"""Rows the broker refused too often: parked by the relay, released by an operator.

A parked row keeps its outbox id, so :func:`requeue` puts it back ahead of the
rows of its key that waited behind it; :func:`drop` gives it up, which releases
those rows. Both are for an operator who fixed (or accepted) the cause named in
``last_error``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from strata.core.migrations import DbConnection, quote_schema
from strata.core.outbox.writer import channel

COLUMNS = "id, topic, key, event_id, event_type, payload, headers, attempts, last_error, created_at"


@dataclass(frozen=True)
class ParkedEvent:
    """One parked row, as an operator needs to judge it (the payload stays in the table)."""

    id: int
    topic: str
    key: str
    event_id: str
    event_type: str
    attempts: int
    last_error: str
    created_at: datetime
    parked_at: datetime


async def parked(db: asyncpg.Pool | DbConnection, schema: str) -> list[ParkedEvent]:
    """Every parked row of ``schema``, oldest first."""
    quoted = quote_schema(schema)
    rows = await db.fetch(
        "SELECT id, topic, key, event_id::text, event_type, attempts, last_error, created_at,"
        f" parked_at FROM {quoted}.outbox_parked ORDER BY id"
    )
    return [ParkedEvent(**dict(row)) for row in rows]


async def requeue(db: asyncpg.Pool | DbConnection, schema: str, event_id: str) -> bool:
    """Put a parked event back in the outbox with no attempts counted; False if not parked."""
    quoted = quote_schema(schema)
    moved: int = await db.fetchval(
        f"WITH moved AS (DELETE FROM {quoted}.outbox_parked WHERE event_id = $1"
        f" RETURNING {COLUMNS}), added AS (INSERT INTO {quoted}.outbox ({COLUMNS})"
        " SELECT id, topic, key, event_id, event_type, payload, headers, 0, last_error,"
        " created_at FROM moved RETURNING 1)"
        " SELECT count(*) FROM added, pg_notify($2, '')",
        _uuid(event_id),
        channel(schema),
    )
    return moved == 1


async def drop(db: asyncpg.Pool | DbConnection, schema: str, event_id: str) -> bool:
    """Give up a parked event for good, releasing its key; False if it was not parked."""
    quoted = quote_schema(schema)
    status = await db.execute(
        f"WITH gone AS (DELETE FROM {quoted}.outbox_parked WHERE event_id = $1 RETURNING 1)"
        " SELECT pg_notify($2, '') FROM gone",
        _uuid(event_id),
        channel(schema),
    )
    return status == "SELECT 1"


async def park(
    conn: DbConnection, schema: str, ids: list[int], errors: list[str], attempts: list[int]
) -> None:
    """Move rows ``ids`` to the parked table with their attempts and last error."""
    quoted = quote_schema(schema)
    await conn.execute(
        f"WITH failed AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[])"
        f" AS f(id, error, attempts)), moved AS (DELETE FROM {quoted}.outbox o USING failed"
        " WHERE o.id = failed.id RETURNING o.*, failed.error, failed.attempts AS tries)"
        f" INSERT INTO {quoted}.outbox_parked ({COLUMNS})"
        " SELECT id, topic, key, event_id, event_type, payload, headers, tries, error,"
        " created_at FROM moved",
        ids,
        errors,
        attempts,
    )


def _uuid(event_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(event_id)
    except (ValueError, TypeError):
        raise ValueError(f"event_id {event_id!r} is not a UUID") from None
