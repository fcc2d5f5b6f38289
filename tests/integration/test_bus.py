"""The event bus against the real Kafka broker of the local stack (``make stack-up``).

One trace follows an event from a producer process to a consumer in this one; bad
records land in the dead-letter topic with their reason while the consumer goes
on; and the group's committed offset ends past every record, so each one was
either handled or dead-lettered: nothing is lost. Offsets are committed behind
the work, yet a stop or a rebalance hands on exactly what was handled; a batch
consumer claims events in its inbox (Postgres) once, whatever Kafka redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
import structlog.testing
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf.any_pb2 import Any as AnyPayload
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from topics import topic_with_dead_letters

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core import kafka
from strata.core.bus import Bus, event_headers
from strata.core.envelope import seal
from strata.core.errors import PermanentError
from strata.core.inbox import claim_many
from strata.core.migrations import quote_schema
from strata.core.settings import BusSettings, KafkaSettings, load
from strata.core.telemetry import configure_tracing, current_trace_id
from strata.core.topics import dead_letter_topic

pytestmark = pytest.mark.integration

PEER = Path(__file__).with_name("bus_peer.py")
GROUP_PEER = Path(__file__).with_name("group_peer.py")
WAIT = 60.0
"""Upper bound on waiting for a record to arrive: a guard against hanging, not a timing check."""

SETTINGS = load(KafkaSettings)


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A fresh one-partition topic and its dead-letter topic, deleted afterwards."""
    async with _topic(partitions=1) as name:
        yield name


@pytest.fixture
async def topic_of_two() -> AsyncIterator[str]:
    """A fresh two-partition topic and its dead-letter topic, deleted afterwards."""
    async with _topic(partitions=2) as name:
        yield name


@contextlib.asynccontextmanager
async def _topic(partitions: int) -> AsyncIterator[str]:
    async with topic_with_dead_letters(f"test.bus.{uuid.uuid4().hex[:12]}", partitions) as name:
        yield name


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka producer, for records no Strata publisher would write."""
    producer = kafka.producer(SETTINGS)
    await producer.start()
    yield producer
    await producer.stop()


def _bus(name: str, *, commit_on_stop_only: bool = False) -> Bus:
    """A bus; ``commit_on_stop_only`` leaves committing to a stop or a rebalance."""
    configure_tracing("test-bus")
    settings = BusSettings(producer=f"{name}/test", retry_backoff_initial=0.01)
    if commit_on_stop_only:
        settings = settings.model_copy(
            update={"commit_interval_ms": 3_600_000, "commit_every": 1_000_000}
        )
    return Bus(name, kafka=SETTINGS, settings=settings)


async def _next(queue: asyncio.Queue[Message]) -> Message:
    return await asyncio.wait_for(queue.get(), WAIT)


async def test_an_event_from_another_process_is_handled_in_its_trace(topic: str) -> None:
    bus = _bus("consumer")
    handled: asyncio.Queue[tuple[StringValue, str | None]] = asyncio.Queue()

    @bus.consumer(topic, group=f"g-{uuid.uuid4().hex[:8]}").on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        handled.put_nowait((payload, current_trace_id()))

    async with bus:
        peer = await asyncio.create_subprocess_exec(
            sys.executable, str(PEER), topic, "run-1", "from the peer",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await peer.communicate()
        payload, trace_id = await asyncio.wait_for(handled.get(), WAIT)

    assert peer.returncode == 0
    assert payload == StringValue(value="from the peer")
    assert trace_id is not None
    assert trace_id == stdout.decode().strip()


async def test_bad_records_are_dead_lettered_and_nothing_is_lost(
    topic: str, producer: AIOKafkaProducer
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    bus = _bus("consumer")
    handled: asyncio.Queue[Message] = asyncio.Queue()
    consumer = bus.consumer(topic, group=group)

    @consumer.on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        handled.put_nowait(payload)

    @consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        raise PermanentError(f"number {payload.value} is out of range")

    bad = [b"\x00\xffgarbage", _unknown_type(), _missing_producer()]  # the type is skipped
    async with bus:
        await bus.publish(StringValue(value="first"), topic=topic, key="k")
        for value in bad:
            await producer.send_and_wait(topic, value, key=b"k")
        await bus.publish(Int64Value(value=-1), topic=topic, key="k")
        await bus.publish(StringValue(value="last"), topic=topic, key="k")
        assert await _next(handled) == StringValue(value="first")
        assert await _next(handled) == StringValue(value="last")

    letters = await _read(dead_letter_topic(topic), count=3)
    assert [(d.offset, d.cause) for d in letters] == [
        (1, DeadLetter.CAUSE_MALFORMED),
        (3, DeadLetter.CAUSE_MALFORMED),
        (4, DeadLetter.CAUSE_REJECTED),
    ]
    assert "not a strata.common.v1.Envelope" in letters[0].reason
    assert letters[1].reason == "envelope is missing field(s): producer"
    assert letters[2].reason == "PermanentError: number -1 is out of range"
    assert [d.value for d in letters[:2]] == [bad[0], bad[2]]
    assert all((d.topic, d.key, d.consumer_group) == (topic, b"k", group) for d in letters)
    assert await _committed(group, topic) == 6


async def test_an_outage_is_waited_out_not_dead_lettered(topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    bus = _bus("consumer")
    handled: asyncio.Queue[Message] = asyncio.Queue()
    attempts = 0

    @bus.consumer(topic, group=group).on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("feature store restarting")
        handled.put_nowait(payload)

    async with bus:
        await bus.publish(StringValue(value="eventually"), topic=topic, key="k")
        assert await _next(handled) == StringValue(value="eventually")

    assert attempts == 3
    assert await _committed(group, topic) == 1
    assert await _end_offset(dead_letter_topic(topic)) == 0


async def test_a_stop_commits_every_handled_offset(topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    bus = _bus("consumer", commit_on_stop_only=True)
    handled: asyncio.Queue[Message] = asyncio.Queue()

    @bus.consumer(topic, group=group).on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        handled.put_nowait(payload)

    async with bus:
        for n in range(5):
            await bus.publish(StringValue(value=str(n)), topic=topic, key="k")
        for _ in range(5):
            await _next(handled)

    assert await _committed(group, topic) == 5


async def test_a_stop_during_a_join_held_by_a_dead_member_is_cut_short_and_said(
    topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rebalance waits for every member to rejoin, a SIGKILLed one until its session
    times out (two minutes here): a consumer stopping while it rejoins gives up at its
    bound, and says what it cut short."""
    caplog.set_level(logging.INFO, logger="aiokafka.consumer.group_coordinator")
    group = f"g-{uuid.uuid4().hex[:8]}"
    bus = _bus("consumer")

    @bus.consumer(topic, group=group).on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        pass

    await bus.start()
    dead = await _member(topic, group)
    newcomer: asyncio.subprocess.Process | None = None
    try:
        assert dead.stdout is not None
        assert await asyncio.wait_for(dead.stdout.readline(), WAIT) == b"assigned\n"
        dead.kill()
        await dead.wait()
        joins = _joins(caplog, group)
        newcomer = await _member(topic, group)
        await _joined_again(caplog, group, after=joins)
        with structlog.testing.capture_logs() as logged:
            async with asyncio.timeout(WAIT):
                await bus.stop_consuming(within=0.5)
    finally:
        await bus.stop()
        if newcomer is not None:
            newcomer.kill()
            await newcomer.wait()

    cut = [line for line in logged if line["event"].startswith("consumer stop cut short")]
    assert [(line["cut_short"], line["group"]) for line in cut] == [("leaving the group", group)]


async def _member(topic: str, group: str) -> asyncio.subprocess.Process:
    """Another process joining ``group`` (:mod:`group_peer`)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, str(GROUP_PEER), topic, group, stdout=asyncio.subprocess.PIPE
    )


def _joins(caplog: pytest.LogCaptureFixture, group: str) -> int:
    """How many JoinGroup requests this process's consumers of ``group`` sent (aiokafka
    logs each just before sending it)."""
    return sum(r.getMessage() == f"(Re-)joining group {group}" for r in caplog.records)


async def _joined_again(caplog: pytest.LogCaptureFixture, group: str, after: int) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if _joins(caplog, group) > after:
                return
            await asyncio.sleep(0.05)


async def test_a_rebalance_hands_on_exactly_what_was_handled(topic_of_two: str) -> None:
    """Offsets committed when partitions are revoked: the new member redoes nothing."""
    topic, group = topic_of_two, f"g-{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[str]] = {}
    arrived: asyncio.Queue[str] = asyncio.Queue()

    def member(name: str) -> Bus:
        bus = _bus(name, commit_on_stop_only=True)

        @bus.consumer(topic, group=group).on(StringValue)
        async def on_text(payload: StringValue, envelope: Envelope) -> None:
            seen.setdefault(payload.value, []).append(name)
            arrived.put_nowait(name)

        return bus

    first, second = member("first"), member("second")
    async with first:
        for n in range(10):
            await first.publish(StringValue(value=f"before-{n}"), topic=topic, key=f"k{n}")
        assert [await _next_name(arrived) for _ in range(10)] == ["first"] * 10
        async with second:
            # Until the group has rebalanced, the first member handles every probe.
            n = 0
            while await _probe(first, topic, arrived, n) != "second":
                n += 1
        ends = await _end_offsets(topic, partitions=2)

    assert all(len(members) == 1 for members in seen.values()), seen
    assert len(seen) == 10 + n + 1
    assert await _committed_all(group, topic, partitions=2) == ends


async def test_a_batch_consumer_applies_each_event_once(
    topic: str, producer: AIOKafkaProducer, pool: asyncpg.Pool
) -> None:
    group, schema = f"g-{uuid.uuid4().hex[:8]}", f"test_bus_{uuid.uuid4().hex[:8]}"
    quoted = quote_schema(schema)
    await pool.execute(
        f"CREATE SCHEMA {quoted}; "
        f"CREATE TABLE {quoted}.inbox (consumer text NOT NULL, event_id uuid NOT NULL, "
        "handled_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, event_id)); "
        f"CREATE TABLE {quoted}.applied (event_id uuid PRIMARY KEY, value text NOT NULL)"
    )
    bus = _bus("consumer")
    records: asyncio.Queue[int] = asyncio.Queue()

    @bus.consumer(topic, group=group).on_batch(StringValue)
    async def on_texts(events: Sequence[tuple[StringValue, Envelope]]) -> None:
        by_id = {envelope.event_id: payload.value for payload, envelope in events}
        async with pool.acquire() as conn, conn.transaction():
            fresh = await claim_many(conn, schema, "applier", by_id)
            await conn.executemany(
                f"INSERT INTO {quoted}.applied VALUES ($1, $2)",
                [(uuid.UUID(event_id), by_id[event_id]) for event_id in fresh],
            )
        for _ in events:
            records.put_nowait(1)

    try:
        envelopes = [seal(StringValue(value=str(n)), key="k", producer="p") for n in range(20)]
        async with bus:
            for envelope in envelopes:
                await _relay(bus, topic, envelope)
            await producer.send_and_wait(topic, b"\x00\xffgarbage", key=b"k")
            for envelope in envelopes[:5]:  # redelivered, as after a relay restart
                await _relay(bus, topic, envelope)
            for _ in range(25):
                await asyncio.wait_for(records.get(), WAIT)

        rows = await pool.fetch(f"SELECT value FROM {quoted}.applied")
        assert sorted(int(row["value"]) for row in rows) == list(range(20))
        [letter] = await _read(dead_letter_topic(topic), count=1)
        assert (letter.offset, letter.cause) == (20, DeadLetter.CAUSE_MALFORMED)
        assert await _committed(group, topic) == 26
    finally:
        await pool.execute(f"DROP SCHEMA {quoted} CASCADE")


async def _relay(bus: Bus, topic: str, envelope: Envelope) -> None:
    """Send a sealed envelope as the outbox relay does: through the bus's producer."""
    headers = event_headers(envelope.type, envelope.event_id, envelope.trace_context)
    data = envelope.SerializeToString()
    await bus.producer.send_and_wait(topic, data, key=envelope.key.encode(), headers=headers)


async def _probe(bus: Bus, topic: str, arrived: asyncio.Queue[str], n: int) -> str:
    """Publish one event and return the name of the member that handled it."""
    await bus.publish(StringValue(value=f"probe-{n}"), topic=topic, key=f"p{n}")
    return await _next_name(arrived)


async def _next_name(arrived: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(arrived.get(), WAIT)


def _unknown_type() -> bytes:
    """A well-formed envelope whose payload type no Strata contract defines."""
    envelope = seal(StringValue(value="x"), key="k", producer="elsewhere")
    envelope.type = "strata.nowhere.v1.Ghost"
    envelope.payload.CopyFrom(
        AnyPayload(type_url="type.googleapis.com/strata.nowhere.v1.Ghost", value=b"\x08\x01")
    )
    return envelope.SerializeToString()


def _missing_producer() -> bytes:
    envelope = seal(StringValue(value="x"), key="k", producer="elsewhere")
    envelope.ClearField("producer")
    return envelope.SerializeToString()


async def _read(topic: str, count: int) -> list[DeadLetter]:
    """The first ``count`` records of a one-partition topic, as dead letters."""
    reader = AIOKafkaConsumer(bootstrap_servers=SETTINGS.bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        await reader.seek_to_beginning(partition)
        letters: list[DeadLetter] = []
        while len(letters) < count:
            record = await asyncio.wait_for(reader.getone(), WAIT)
            letters.append(DeadLetter.FromString(record.value))
        return letters
    finally:
        await reader.stop()


async def _committed(group: str, topic: str) -> int:
    [offset] = await _committed_all(group, topic, partitions=1)
    return offset


async def _committed_all(group: str, topic: str, partitions: int) -> list[int]:
    admin = kafka.admin(SETTINGS)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return [int(offsets[TopicPartition(topic, p)].offset) for p in range(partitions)]


async def _end_offsets(topic: str, partitions: int) -> list[int]:
    reader = AIOKafkaConsumer(bootstrap_servers=SETTINGS.bootstrap)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await reader.end_offsets(tps)
        return [int(ends[tp]) for tp in tps]
    finally:
        await reader.stop()


async def _end_offset(topic: str) -> int:
    reader = AIOKafkaConsumer(bootstrap_servers=SETTINGS.bootstrap)
    await reader.start()
    try:
        partition = TopicPartition(topic, 0)
        ends = await reader.end_offsets([partition])
        return int(ends[partition])
    finally:
        await reader.stop()
