"""The inbox against real Postgres: each event applied once, whatever Kafka redelivers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from strata.core.envelope import seal
from strata.core.inbox import claim, claim_events, claim_many, prune
from strata.core.migrations import DbConnection, migrate_service

pytestmark = pytest.mark.integration

CONSUMER = "test-consumer"


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    await migrate_service(pool, name, "strata.scheduler.migrations")
    yield name
    await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class StateChangeError(Exception):
    """The consumer's own work failed after the claim."""


async def test_an_inbox_claim_is_granted_once_per_consumer(pool: asyncpg.Pool, schema: str) -> None:
    event_id = str(uuid.uuid4())
    async with pool.acquire() as conn:
        async with conn.transaction():
            assert await claim(conn, schema, event_id, "a")
        async with conn.transaction():
            assert not await claim(conn, schema, event_id, "a")
            assert await claim(conn, schema, event_id, "b")


async def test_a_rolled_back_claim_lets_the_next_delivery_handle_the_event(
    pool: asyncpg.Pool, schema: str
) -> None:
    event_id = str(uuid.uuid4())
    async with pool.acquire() as conn:

        async def claim_then_fail() -> None:
            async with conn.transaction():
                assert await claim(conn, schema, event_id, CONSUMER)
                raise StateChangeError

        with pytest.raises(StateChangeError):
            await claim_then_fail()
        async with conn.transaction():
            assert await claim(conn, schema, event_id, CONSUMER)


async def test_claim_many_returns_only_the_new_ids(pool: asyncpg.Pool, schema: str) -> None:
    old, new = str(uuid.uuid4()), str(uuid.uuid4()).upper()
    async with pool.acquire() as conn, conn.transaction():
        await claim(conn, schema, old, CONSUMER)
        assert await claim_many(conn, schema, CONSUMER, [old, new, new]) == {new}


async def test_two_copies_of_an_event_in_one_batch_are_applied_once(
    pool: asyncpg.Pool, schema: str
) -> None:
    seen, first, second = (
        seal(StringValue(value=v), key="k", producer="test") for v in ("seen", "a", "b")
    )
    async with pool.acquire() as conn:
        async with conn.transaction():
            await claim(conn, schema, seen.event_id, CONSUMER)
        # The relay restarted before deleting what it sent: copies ride in one batch.
        batch = [
            (StringValue(value="a"), first),
            (StringValue(value="seen"), seen),
            (StringValue(value="b"), second),
            (StringValue(value="a again"), first),
            (StringValue(value="b again"), second),
        ]
        async with conn.transaction():
            fresh = await claim_events(conn, schema, CONSUMER, batch)
        async with conn.transaction():
            again = await claim_events(conn, schema, CONSUMER, batch)

    assert [payload.value for payload, _ in fresh] == ["a", "b"]
    assert again == []


async def _waits_on_a_lock(pool: asyncpg.Pool, pid: int) -> None:
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
    while True:
        if await pool.fetchval(query, pid) == "Lock":
            return
        await asyncio.sleep(0.02)


async def test_overlapping_batches_claimed_in_opposite_orders_do_not_deadlock(
    pool: asyncpg.Pool, schema: str
) -> None:
    low, middle, high = sorted(str(uuid.uuid4()) for _ in range(3))
    async with pool.acquire() as holder, pool.acquire() as one, pool.acquire() as two:
        # The holder claims the middle id, so both batches stop on it with their first
        # id inserted; releasing it lets them go on to each other's first id.
        blocker = holder.transaction()
        await blocker.start()
        await claim(holder, schema, middle, CONSUMER)

        async def claim_in(conn: DbConnection, order: list[str]) -> set[str]:
            async with conn.transaction():
                return await claim_many(conn, schema, CONSUMER, order)

        forward = asyncio.create_task(claim_in(one, [low, middle, high]))
        await _waits_on_a_lock(pool, one.get_server_pid())
        backward = asyncio.create_task(claim_in(two, [high, middle, low]))
        await _waits_on_a_lock(pool, two.get_server_pid())
        await blocker.rollback()
        claimed = await asyncio.gather(forward, backward)

    assert sorted(claimed[0] | claimed[1]) == [low, middle, high]
    assert not claimed[0] & claimed[1]


async def test_claim_outside_a_transaction_is_refused(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await claim(conn, schema, str(uuid.uuid4()), CONSUMER)


async def test_prune_deletes_only_rows_past_retention(pool: asyncpg.Pool, schema: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await claim_many(conn, schema, CONSUMER, [str(uuid.uuid4()) for _ in range(3)])
        await conn.execute(
            f"UPDATE \"{schema}\".inbox SET handled_at = now() - interval '30 days' "
            f'WHERE event_id IN (SELECT event_id FROM "{schema}".inbox LIMIT 2)'
        )

    assert await prune(pool, schema, timedelta(days=14)) == 2
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".inbox') == 1
