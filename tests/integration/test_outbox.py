"""The outbox against real Postgres and Kafka.

An event committed with its state change reaches its consumer exactly once, even
when the producer is killed before publishing and Kafka delivers it twice; per-key
order holds with two relay replicas and with writers that commit out of order; a
rollback publishes nothing; a row the broker refuses is parked without holding up
other keys; an outage parks nothing and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged
from strata.core import kafka
from strata.core.envelope import open_envelope, seal
from strata.core.inbox import claim
from strata.core.metrics import Metrics
from strata.core.migrations import migrate_service
from strata.core.outbox import MAX_EVENT_BYTES, Outbox, OutboxRelay, drop, parked, requeue
from strata.core.settings import KafkaSettings, load

pytestmark = pytest.mark.integration

PEER = Path(__file__).with_name("outbox_peer.py")
PARTITIONS = 3
CONSUMER = "test-consumer"


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    """A fresh schema with the core's tables (outbox, inbox) and the example service's
    (``partitions``, tests/integration/example): a state table no real service changes."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await migrate_service(pool, name, "example")
    await pool.execute(f'CREATE TABLE "{name}".handled (event_id uuid, value text)')
    yield name
    await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def admin() -> AsyncIterator[AIOKafkaAdminClient]:
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    yield admin
    await admin.close()


@pytest.fixture
async def topic(admin: AIOKafkaAdminClient) -> AsyncIterator[str]:
    name = f"test.outbox.{uuid.uuid4().hex[:12]}"
    await admin.create_topics([NewTopic(name, PARTITIONS, replication_factor=1)])
    yield name
    await admin.delete_topics([name])


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
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".partitions') == 1

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
            await Outbox(schema, "test").enqueue(conn, topic, *envelopes[start : start + 10])


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
                await Outbox(schema, "test").enqueue(conn, topic, rolled_back)
                raise StateChangeError

        with pytest.raises(StateChangeError):
            await enqueue_then_fail()
        assert await outbox_size(pool, schema) == 0

        async with pool.acquire() as conn, conn.transaction():
            await Outbox(schema, "test").enqueue(conn, topic, committed)
        record = await consumer.getone()
        await until_drained(pool, schema)
        records = [record, *await read_to_end(consumer, topic)]

    assert [open_envelope(r.value).event_id for r in records] == [committed.event_id]
    assert record.value == committed.SerializeToString()
    assert list(record.headers) == [
        ("event-type", b"google.protobuf.StringValue"),
        ("event-id", committed.event_id.encode()),
        ("traceparent", trace["traceparent"].encode()),
    ]


async def test_enqueue_outside_a_transaction_is_refused(pool: asyncpg.Pool, schema: str) -> None:
    envelope = seal(StringValue(value="x"), key="wf-1", producer="test")
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await Outbox(schema, "test").enqueue(conn, "some.topic", envelope)


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
            await Outbox(schema, "test").enqueue(conn, "some.topic", envelope)


async def test_publish_seals_a_proto_event_with_its_route_and_type(
    pool: asyncpg.Pool, schema: str
) -> None:
    change = TaskStateChanged()
    change.attempt.run_id = "run-7"
    async with pool.acquire() as conn, conn.transaction():
        [envelope] = await Outbox(schema, "scheduler").publish(conn, change)

    row = await pool.fetchrow(
        f'SELECT topic, key, event_id::text, event_type, payload FROM "{schema}".outbox'
    )
    assert row is not None
    assert (row["topic"], row["key"]) == ("strata.runs.events", "run-7")
    assert (row["event_id"], row["event_type"]) == (
        envelope.event_id,
        TaskStateChanged.DESCRIPTOR.full_name,
    )
    assert open_envelope(row["payload"]).payload == change
    assert envelope.producer == "scheduler"


async def test_an_event_too_large_for_the_broker_is_refused_at_enqueue_naming_size_and_limit(
    pool: asyncpg.Pool, schema: str
) -> None:
    envelope = seal(BytesValue(value=b"x" * MAX_EVENT_BYTES), key="run-a", producer="test")
    async with pool.acquire() as conn, conn.transaction():
        limit = rf"over the limit of {MAX_EVENT_BYTES} bytes"
        with pytest.raises(ValueError, match=rf"is 10\d{{5}} bytes as a Kafka record, {limit}"):
            await Outbox(schema, "test").enqueue(conn, "some.topic", envelope)
    assert await outbox_size(pool, schema) == 0


async def _done_or_waiting_on_a_lock(
    pool: asyncpg.Pool, task: asyncio.Task[None], pid: int
) -> None:
    while not task.done():
        if (
            await pool.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
            == "Lock"
        ):
            return
        await asyncio.sleep(0.02)


async def _commit_in_reverse(
    pool: asyncpg.Pool, outbox: Outbox, topic: str, first: Int64Value, second: Int64Value
) -> list[int]:
    """Writer one enqueues first; writer two commits as soon as it can, then writer one.

    Return the values in the order their transactions committed. Unserialised,
    two commits before one, against id order; serialised by key, two waits at
    its enqueue until one has committed.
    """
    committed: list[int] = []
    envelopes = [seal(v, key="run-a", producer="test") for v in (first, second)]
    async with pool.acquire() as one, pool.acquire() as two:
        transaction = one.transaction()
        await transaction.start()
        await outbox.enqueue(one, topic, envelopes[0])

        async def write_second() -> None:
            async with two.transaction():
                await outbox.enqueue(two, topic, envelopes[1])
            committed.append(second.value)

        writer = asyncio.create_task(write_second())
        await _done_or_waiting_on_a_lock(pool, writer, two.get_server_pid())
        await transaction.commit()
        committed.append(first.value)
        await writer
    return committed


async def test_writers_of_one_key_are_published_in_commit_order(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    outbox = Outbox(schema, "test")
    committed: list[int] = []
    for n in range(0, 10, 2):
        committed += await _commit_in_reverse(
            pool, outbox, topic, Int64Value(value=n), Int64Value(value=n + 1)
        )

    async with running(OutboxRelay(pool, schema, producer)):
        await until_drained(pool, schema)
        records = await read_to_end(consumer, topic)

    assert numbers_by_key(records)["run-a"] == committed


async def until_settled(pool: asyncpg.Pool, schema: str, waiting: int, parked_rows: int) -> None:
    """Wait until ``waiting`` rows are left in the outbox and ``parked_rows`` are parked."""
    while True:
        row = await pool.fetchrow(
            f'SELECT (SELECT count(*) FROM "{schema}".outbox) AS waiting,'
            f' (SELECT count(*) FROM "{schema}".outbox_parked) AS parked'
        )
        if row is not None and (row["waiting"], row["parked"]) == (waiting, parked_rows):
            return
        await asyncio.sleep(0.02)


def events_in(records: list[ConsumerRecord]) -> list[tuple[str, str]]:
    """(key, value) of each record, in the order read; a duplicate shows twice."""
    seen = []
    for record in records:
        event = open_envelope(record.value)
        assert isinstance(event.payload, StringValue)
        seen.append((event.envelope.key, event.payload.value))
    return seen


def gauge(metrics: Metrics, name: str, schema: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"schema": schema})


async def test_a_row_for_a_missing_topic_is_parked_its_key_waits_and_other_keys_flow(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    missing = f"test.outbox.missing.{uuid.uuid4().hex[:12]}"
    rows = [
        (topic, "run-a", "a1"),
        (missing, "run-m", "m1"),
        (missing, "run-m", "m2"),
        (topic, "run-a", "a2"),
        (topic, "run-b", "b1"),
    ]
    envelopes = {
        value: seal(StringValue(value=value), key=key, producer="test") for _, key, value in rows
    }
    async with pool.acquire() as conn, conn.transaction():
        for row_topic, _, value in rows:
            await Outbox(schema, "test").enqueue(conn, row_topic, envelopes[value])
    metrics = Metrics()
    relay = OutboxRelay(
        pool,
        schema,
        producer,
        metrics=metrics,
        max_attempts=2,
        standby_retry=0.05,
        sweep_interval=0.1,
    )

    async with running(relay):
        await until_settled(pool, schema, waiting=1, parked_rows=1)
        flowed = events_in(await read_to_end(consumer, topic))
        [stuck] = await parked(pool, schema)
        waiting = await pool.fetchrow(f'SELECT event_id::text, attempts FROM "{schema}".outbox')
        assert gauge(metrics, "strata_outbox_parked", schema) == 1
        assert gauge(metrics, "strata_outbox_published_total", schema) == 3

        await admin.create_topics([NewTopic(missing, 1, replication_factor=1)])
        assert await requeue(pool, schema, stuck.event_id)
        await until_drained(pool, schema)
        released = await read_from_start(missing)
        await admin.delete_topics([missing])

    by_key = sorted(flowed, key=lambda event: event[0])  # stable: keeps each key's order
    assert by_key == [("run-a", "a1"), ("run-a", "a2"), ("run-b", "b1")]
    assert (stuck.event_id, stuck.topic, stuck.key, stuck.attempts) == (
        envelopes["m1"].event_id,
        missing,
        "run-m",
        2,
    )
    assert "does not exist" in stuck.last_error
    assert waiting is not None
    assert (waiting["event_id"], waiting["attempts"]) == (envelopes["m2"].event_id, 0)
    assert events_in(released) == [("run-m", "m1"), ("run-m", "m2")]
    assert await parked(pool, schema) == []


async def read_from_start(topic: str) -> list[ConsumerRecord]:
    consumer = kafka.consumer(load(KafkaSettings), group_id=f"test-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        end = (await consumer.end_offsets([TopicPartition(topic, 0)]))[TopicPartition(topic, 0)]
        records: list[ConsumerRecord] = []
        while len(records) < end:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


@pytest.fixture
async def small_producer() -> AsyncIterator[AIOKafkaProducer]:
    """A producer that takes records of at most 4 KiB, so a modest row is refused as too large."""
    producer = kafka.producer(load(KafkaSettings), max_request_size=4096)
    await producer.start()
    yield producer
    await producer.stop()


async def test_a_row_too_large_is_parked_and_dropping_it_releases_its_key(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    small_producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    big = seal(StringValue(value="x" * 8192), key="run-a", producer="test")
    after = seal(StringValue(value="a2"), key="run-a", producer="test")
    other = seal(StringValue(value="b1"), key="run-b", producer="test")
    async with pool.acquire() as conn, conn.transaction():
        await Outbox(schema, "test").enqueue(conn, topic, big, after, other)
    relay = OutboxRelay(pool, schema, small_producer, max_attempts=1, sweep_interval=0.1)

    async with running(relay):
        await until_settled(pool, schema, waiting=1, parked_rows=1)
        flowed = events_in(await read_to_end(consumer, topic))
        [stuck] = await parked(pool, schema)
        assert await drop(pool, schema, big.event_id)
        await until_drained(pool, schema)
        released = events_in(await read_to_end(consumer, topic))

    assert flowed == [("run-b", "b1")]
    assert stuck.event_id == big.event_id
    assert "MessageSizeTooLargeError" in stuck.last_error
    assert released == [("run-a", "a2")]
    assert await parked(pool, schema) == []


async def until_noted(pool: asyncpg.Pool, schema: str) -> None:
    """Wait until the relay noted an error on a row, or parked one."""
    query = (
        f'SELECT count(*) FROM "{schema}".outbox WHERE last_error IS NOT NULL'
        f' OR EXISTS (SELECT FROM "{schema}".outbox_parked)'
    )
    while True:
        if await pool.fetchval(query):
            return
        await asyncio.sleep(0.05)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_relay_that_cannot_reach_kafka_parks_and_loses_nothing_and_order_holds_after(
    pool: asyncpg.Pool,
    schema: str,
    topic: str,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
) -> None:
    # A producer whose only broker is a closed port: no send can leave, no metadata
    # comes back, as in a Kafka outage. With max_attempts=1, a relay that took the
    # outage for a refusal would park every row at its first failure.
    settings = load(KafkaSettings).model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{closed_port()}"}
    )
    cut_off = OutboxRelay(
        pool, schema, kafka.producer(settings), max_attempts=1, standby_retry=0.05
    )
    await enqueue_numbers(pool, schema, topic, range(40))
    async with running(cut_off):
        await until_noted(pool, schema)
    noted = await pool.fetch(f'SELECT attempts, last_error FROM "{schema}".outbox')
    assert await parked(pool, schema) == []

    async with running(OutboxRelay(pool, schema, producer)):
        await until_drained(pool, schema)
        records = await read_to_end(consumer, topic)

    assert len(noted) == 40
    assert sum(row["last_error"] is not None for row in noted) == len(KEYS)  # one head per key
    assert {row["attempts"] for row in noted} == {0}
    assert cut_off.published == 0
    assert numbers_by_key(records) == expected_by_key(range(40))
