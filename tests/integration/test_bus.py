"""The event bus against the real Kafka broker of the local stack (``make stack-up``).

One trace follows an event from a producer process to a consumer in this one; bad
records land in the dead-letter topic with their reason while the consumer goes
on; and the group's committed offset ends past every record, so each one was
either handled or dead-lettered: nothing is lost.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from google.protobuf.any_pb2 import Any as AnyPayload
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core import kafka
from strata.core.bus import Bus
from strata.core.envelope import seal
from strata.core.errors import PermanentError
from strata.core.settings import BusSettings, KafkaSettings, load
from strata.core.telemetry import configure_tracing, current_trace_id
from strata.core.topics import dead_letter_topic

pytestmark = pytest.mark.integration

PEER = Path(__file__).with_name("bus_peer.py")
WAIT = 60.0
"""Upper bound on waiting for a record to arrive: a guard against hanging, not a timing check."""

SETTINGS = load(KafkaSettings)


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A fresh one-partition topic and its dead-letter topic, deleted afterwards."""
    name = f"test.bus.{uuid.uuid4().hex[:12]}"
    admin = kafka.admin(SETTINGS)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, 1, replication_factor=1) for t in (name, dead_letter_topic(name))]
        )
        yield name
        await admin.delete_topics([name, dead_letter_topic(name)])
    finally:
        await admin.close()


@pytest.fixture
async def producer() -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka producer, for records no Strata publisher would write."""
    producer = kafka.producer(SETTINGS)
    await producer.start()
    yield producer
    await producer.stop()


def _bus(name: str) -> Bus:
    configure_tracing("test-bus")
    settings = BusSettings(producer=f"{name}/test", retry_backoff_initial=0.01)
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

    bad = [b"\x00\xffgarbage", _unknown_type(), _missing_producer()]
    async with bus:
        await bus.publish(topic, StringValue(value="first"), key="k")
        for value in bad:
            await producer.send_and_wait(topic, value, key=b"k")
        await bus.publish(topic, Int64Value(value=-1), key="k")
        await bus.publish(topic, StringValue(value="last"), key="k")
        assert await _next(handled) == StringValue(value="first")
        assert await _next(handled) == StringValue(value="last")

    letters = await _read(dead_letter_topic(topic), count=4)
    assert [(d.offset, d.cause) for d in letters] == [
        (1, DeadLetter.CAUSE_MALFORMED),
        (2, DeadLetter.CAUSE_UNKNOWN_TYPE),
        (3, DeadLetter.CAUSE_MALFORMED),
        (4, DeadLetter.CAUSE_REJECTED),
    ]
    assert "not a strata.common.v1.Envelope" in letters[0].reason
    assert "strata.nowhere.v1.Ghost" in letters[1].reason
    assert letters[2].reason == "envelope is missing field(s): producer"
    assert letters[3].reason == "PermanentError: number -1 is out of range"
    assert [d.value for d in letters[:3]] == bad
    assert all((d.topic, d.key, d.consumer_group) == (topic, b"k", group) for d in letters)
    assert await _committed(group, topic) == 6


async def test_a_transient_failure_is_retried_not_dead_lettered(topic: str) -> None:
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
        await bus.publish(topic, StringValue(value="eventually"), key="k")
        assert await _next(handled) == StringValue(value="eventually")

    assert attempts == 3
    assert await _committed(group, topic) == 1
    assert await _end_offset(dead_letter_topic(topic)) == 0


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
    admin = kafka.admin(SETTINGS)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return int(offsets[TopicPartition(topic, 0)].offset)


async def _end_offset(topic: str) -> int:
    reader = AIOKafkaConsumer(bootstrap_servers=SETTINGS.bootstrap)
    await reader.start()
    try:
        partition = TopicPartition(topic, 0)
        ends = await reader.end_offsets([partition])
        return int(ends[partition])
    finally:
        await reader.stop()
