"""The outbox and inbox against real Postgres and Kafka.

An event committed with its state change reaches its consumer exactly once, even
when the producer is killed before publishing and Kafka delivers it twice; per-key
order holds with two relay replicas; a rollback publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import NewTopic
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from strata.core import kafka
from strata.core.envelope import open_envelope, seal
from strata.core.inbox import claim, claim_many, prune
from strata.core.migrations import migrate
from strata.core.outbox import OutboxRelay, enqueue
from strata.core.settings import KafkaSettings, load

pytestmark = pytest.mark.integration

PEER = Path(__file__).with_name("outbox_peer.py")
PARTITIONS = 3
CONSUMER = "test-consumer"


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A fresh schema with the scheduler's tables (outbox, inbox, workflows)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await migrate(pool, name, "strata.scheduler.migrations")
    await pool.execute(f'CREATE TABLE "{name}".handled (event_id uuid, value text)')
    yield name
    await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    name = f"test.outbox.{uuid.uuid4().hex[:12]}"
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, replication_factor=1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    producer = kafka.producer(load(KafkaSettings))
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def consumer(topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """Reads every partition of the topic from the start (no group rebalance to wait for)."""
    consumer = kafka.consumer(load(KafkaSettings), group_id=f"test-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    yield consumer
    await consumer.stop()


@contextlib.asynccontextmanager
async def running(*relays: OutboxRelay) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def outbox_size(pool: asyncpg.Pool, schema: str) -> int:
    count: int = await pool.fetchval(f'SELECT count(*) FROM "{schema}".outbox')
    return count


async def until_drained(pool: asyncpg.Pool, schema: str) -> None:
    """Wait until the relay deleted every row; the test's timeout bounds the wait."""
    while True:
        if not await outbox_size(pool, schema):
            return
        await asyncio.sleep(0.02)


async def until_leading(relay: OutboxRelay) -> None:
    while True:
        if relay.leading:
            return
        await asyncio.sleep(0.02)


class StateChangeError(Exception):
    """The consumer's or producer's own work failed after the outbox/inbox call."""


async def handle(pool: asyncpg.Pool, schema: str, record: ConsumerRecord) -> bool:
    """The idempotent consumer: its state change and the inbox claim commit together."""
    event = open_envelope(record.value)
    async with pool.acquire() as conn, conn.transaction():
        if not await claim(conn, schema, event.event_id, CONSUMER):
            return False
        await conn.execute(
            f'INSERT INTO "{schema}".handled (event_id, value) VALUES ($1, $2)',
            uuid.UUID(event.event_id),
            str(event.payload),
        )
        return True


async def read_to_end(consumer: AIOKafkaConsumer, topic: str) -> list[ConsumerRecord]:
    """Every record now on the topic, in partition order."""
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    end = await consumer.end_offsets(partitions)
    records: list[ConsumerRecord] = []
    while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
        batches = await consumer.getmany(timeout_ms=200)
        for batch in batches.values():
            records.extend(batch)
    return records


async def test_an_event_survives_sigkill_after_commit_and_is_handled_exactly_once(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    peer = await asyncio.create_subprocess_exec(
        sys.executable, str(PEER), schema, topic, "wf-1", stdout=asyncio.subprocess.PIPE
    )
    assert peer.stdout is not None
    line = await peer.stdout.readline()
    assert line.startswith(b"committed "), line
    event_id = line.split()[1].decode()
    peer.send_signal(signal.SIGKILL)
    assert await peer.wait() == -signal.SIGKILL
    assert await pool.fetchval(f'SELECT event_id::text FROM "{schema}".outbox') == event_id
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".workflows') == 1

    relay = OutboxRelay(pool, schema, producer, sweep_interval=0.5)
    async with running(relay):
        first = await consumer.getone()
        assert await handle(pool, schema, first)
        await until_drained(pool, schema)

    # Kafka delivers the same bytes again (a relay crash before its delete, a rebalance).
    await producer.send_and_wait(topic, first.value, key=first.key)
    again = await consumer.getone()

    assert open_envelope(again.value).event_id == event_id
    assert not await handle(pool, schema, again)
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".handled') == 1
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".inbox') == 1
    assert first.key == b"wf-1"


KEYS = ("run-a", "run-b", "run-c", "run-d")


async def enqueue_numbers(pool: asyncpg.Pool, schema: str, topic: str, numbers: range) -> None:
    """Enqueue ``Int64Value(n)`` keyed round-robin over KEYS, ten events a transaction."""
    envelopes = [
        seal(Int64Value(value=n), key=KEYS[n % len(KEYS)], producer="test") for n in numbers
    ]
    for start in range(0, len(envelopes), 10):
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, schema, topic, *envelopes[start : start + 10])


def numbers_by_key(records: list[ConsumerRecord]) -> dict[str, list[int]]:
    """What each key's consumer saw, in the order it saw it."""
    seen: dict[str, list[int]] = {key: [] for key in KEYS}
    for record in records:
        event = open_envelope(record.value)
        assert isinstance(event.payload, Int64Value)
        assert record.key == event.envelope.key.encode()
        seen[event.envelope.key].append(event.payload.value)
    return seen


def expected_by_key(numbers: range) -> dict[str, list[int]]:
    return {key: [n for n in numbers if KEYS[n % len(KEYS)] == key] for key in KEYS}


@pytest.fixture
async def second_producer() -> AsyncIterator[AIOKafkaProducer]:
    producer = kafka.producer(load(KafkaSettings))
    await producer.start()
    yield producer
    await producer.stop()


async def test_two_relay_replicas_keep_per_key_order_without_loss_or_duplicates(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    second_producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    numbers = range(400)
    await enqueue_numbers(pool, schema, topic, numbers)
    relays = [
        OutboxRelay(pool, schema, p, batch_size=50, standby_retry=0.05)
        for p in (producer, second_producer)
    ]

    async with running(*relays):
        await until_drained(pool, schema)
        assert [r.leading for r in relays].count(True) == 1
        records = await read_to_end(consumer, topic)

    assert sorted(r.published for r in relays) == [0, len(numbers)]
    assert numbers_by_key(records) == expected_by_key(numbers)


async def test_a_standby_relay_takes_over_when_the_leader_stops(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    second_producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    relays = [OutboxRelay(pool, schema, p, standby_retry=0.05) for p in (producer, second_producer)]
    async with running(*relays) as tasks:
        await enqueue_numbers(pool, schema, topic, range(0, 40))
        await until_drained(pool, schema)
        leader = [r.leading for r in relays].index(True)
        tasks[leader].cancel()
        await asyncio.gather(tasks[leader], return_exceptions=True)

        await enqueue_numbers(pool, schema, topic, range(40, 80))
        await until_drained(pool, schema)
        records = await read_to_end(consumer, topic)
        standby = relays[1 - leader]
        assert standby.leading
        assert standby.published == 40

    assert numbers_by_key(records) == expected_by_key(range(80))


async def test_the_relay_recovers_when_its_connection_is_killed(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    second_producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    relays = [OutboxRelay(pool, schema, p, standby_retry=0.05) for p in (producer, second_producer)]
    async with running(*relays):
        await enqueue_numbers(pool, schema, topic, range(0, 40))
        await until_drained(pool, schema)
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objid::int = hashtext($1)",
            schema,
        )
        assert killed == 1

        await enqueue_numbers(pool, schema, topic, range(40, 80))
        await until_drained(pool, schema)
        assert [r.leading for r in relays].count(True) == 1
        records = await read_to_end(consumer, topic)

    assert numbers_by_key(records) == expected_by_key(range(80))


async def test_a_rollback_enqueues_nothing_and_a_commit_wakes_the_relay_by_notify(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    # With an hour between sweeps, only NOTIFY can wake the relay for the commit below.
    relay = OutboxRelay(pool, schema, producer, sweep_interval=3600)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    rolled_back = seal(StringValue(value="lost"), key="wf-1", producer="test")
    committed = seal(StringValue(value="kept"), key="wf-2", producer="test", trace_context=trace)

    async with running(relay):
        await until_leading(relay)

        async def enqueue_then_fail() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await enqueue(conn, schema, topic, rolled_back)
                raise StateChangeError

        with pytest.raises(StateChangeError):
            await enqueue_then_fail()
        assert await outbox_size(pool, schema) == 0

        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, schema, topic, committed)
        record = await consumer.getone()
        await until_drained(pool, schema)
        records = [record, *await read_to_end(consumer, topic)]

    assert [open_envelope(r.value).event_id for r in records] == [committed.event_id]
    assert record.value == committed.SerializeToString()
    assert ("traceparent", trace["traceparent"].encode()) in record.headers


async def test_enqueue_outside_a_transaction_is_refused(pool: asyncpg.Pool, schema: str) -> None:
    envelope = seal(StringValue(value="x"), key="wf-1", producer="test")
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await enqueue(conn, schema, "some.topic", envelope)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"event_id": "not-a-uuid"}, "envelope.event_id 'not-a-uuid' is not a UUID"),
        ({"key": ""}, "envelope.key is empty"),
    ],
)
async def test_enqueue_names_the_bad_envelope_field(
    pool: asyncpg.Pool, schema: str, overrides: dict[str, str], message: str
) -> None:
    envelope = seal(StringValue(value="x"), key=overrides.get("key", "k"), producer="test")
    envelope.event_id = overrides.get("event_id", envelope.event_id)
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match=message):
            await enqueue(conn, schema, "some.topic", envelope)


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
