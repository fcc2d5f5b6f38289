"""What happens to each record a consumer reads, on FastStream's in-memory broker.

Handled, skipped, retried or dead-lettered with the reason: every record ends in
exactly one of these, and the consumer goes on with the next one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import TestKafkaBroker
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from google.protobuf.any_pb2 import Any as AnyPayload
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from opentelemetry import trace

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus import Bus, Consumer
from strata.core.envelope import seal
from strata.core.errors import PermanentError
from strata.core.settings import BusSettings
from strata.core.telemetry import configure_tracing, trace_carrier
from strata.core.topics import dead_letter_topic

TOPIC = "test.bus.unit"
GROUP = "test-group"
ATTEMPTS = 4


@dataclass
class Seen:
    """What the handlers received and what reached the dead-letter topic."""

    handled: list[tuple[Message, Envelope]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    trace_ids: list[int] = field(default_factory=list)


@dataclass
class Harness:
    bus: Bus
    consumer: Consumer
    seen: Seen

    async def send_raw(self, value: bytes, headers: dict[str, str] | None = None) -> None:
        await self.bus.broker.publish(value, TOPIC, key=b"k", headers=headers)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    configure_tracing("test")
    settings = BusSettings(
        producer="test/unit", retry_attempts=ATTEMPTS, retry_backoff_initial=0.001
    )
    bus = Bus("test", settings=settings)
    seen = Seen()
    consumer = bus.consumer(TOPIC, group=GROUP)

    @consumer.on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        seen.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        seen.handled.append((payload, envelope))

    @bus.broker.subscriber(dead_letter_topic(TOPIC))
    async def on_dead(body: bytes) -> None:
        seen.dead.append(DeadLetter.FromString(body))

    async with TestKafkaBroker(bus.broker):
        yield Harness(bus, consumer, seen)


async def test_an_event_reaches_the_handler_of_its_type(harness: Harness) -> None:
    sent = await harness.bus.publish(TOPIC, StringValue(value="hello"), key="run-1")

    [(payload, envelope)] = harness.seen.handled
    assert payload == StringValue(value="hello")
    assert envelope.event_id == sent.event_id
    assert envelope.producer == "test/unit"
    assert envelope.key == "run-1"
    assert harness.seen.dead == []


async def test_garbage_bytes_are_dead_lettered_whole(harness: Harness) -> None:
    await harness.send_raw(b"\xff\x00 not an envelope")
    await harness.bus.publish(TOPIC, StringValue(value="next"), key="k")

    [letter] = harness.seen.dead
    assert letter.cause == DeadLetter.CAUSE_MALFORMED
    assert "not a strata.common.v1.Envelope" in letter.reason
    assert letter.value == b"\xff\x00 not an envelope"
    assert letter.topic == TOPIC
    assert letter.key == b"k"
    assert letter.consumer_group == GROUP
    assert letter.consumer == "test/unit"
    assert letter.attempts == 0
    assert [p for p, _ in harness.seen.handled] == [StringValue(value="next")]


async def test_an_unknown_event_type_is_dead_lettered(harness: Harness) -> None:
    envelope = seal(StringValue(value="x"), key="k", producer="elsewhere")
    envelope.type = "strata.nowhere.v1.Ghost"
    envelope.payload.CopyFrom(
        AnyPayload(type_url="type.googleapis.com/strata.nowhere.v1.Ghost", value=b"\x08\x01")
    )
    await harness.send_raw(envelope.SerializeToString())

    [letter] = harness.seen.dead
    assert letter.cause == DeadLetter.CAUSE_UNKNOWN_TYPE
    assert "strata.nowhere.v1.Ghost" in letter.reason
    assert letter.event_id == envelope.event_id
    assert letter.event_type == "strata.nowhere.v1.Ghost"


async def test_a_missing_envelope_field_is_named_in_the_dead_letter(harness: Harness) -> None:
    envelope = seal(StringValue(value="x"), key="k", producer="elsewhere")
    envelope.ClearField("producer")
    await harness.send_raw(envelope.SerializeToString())

    [letter] = harness.seen.dead
    assert letter.cause == DeadLetter.CAUSE_MALFORMED
    assert letter.reason == "envelope is missing field(s): producer"
    assert letter.value == envelope.SerializeToString()


async def test_a_permanent_handler_error_is_dead_lettered_at_once(harness: Harness) -> None:
    calls = 0

    @harness.consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError(f"number {payload.value} is out of range")

    await harness.bus.publish(TOPIC, Int64Value(value=-1), key="k")

    [letter] = harness.seen.dead
    assert calls == 1
    assert letter.cause == DeadLetter.CAUSE_REJECTED
    assert letter.reason == "PermanentError: number -1 is out of range"
    assert letter.attempts == 1
    assert letter.event_type == "google.protobuf.Int64Value"


async def test_a_transient_error_is_retried_until_it_passes(harness: Harness) -> None:
    calls = 0

    @harness.consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("database restarting")

    await harness.bus.publish(TOPIC, Int64Value(value=7), key="k")

    assert calls == 3
    assert harness.seen.dead == []


async def test_a_transient_error_that_never_passes_ends_in_the_dead_letters(
    harness: Harness,
) -> None:
    @harness.consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        raise TimeoutError("feature store did not answer")

    await harness.bus.publish(TOPIC, Int64Value(value=7), key="k")

    [letter] = harness.seen.dead
    assert letter.cause == DeadLetter.CAUSE_RETRIES_EXHAUSTED
    assert letter.attempts == ATTEMPTS
    assert "TimeoutError: feature store did not answer" in letter.reason


async def test_an_event_type_without_a_handler_here_is_skipped(harness: Harness) -> None:
    await harness.bus.publish(TOPIC, Int64Value(value=1), key="k")

    assert harness.seen.handled == []
    assert harness.seen.dead == []


async def test_a_binary_header_does_not_stop_the_record(harness: Harness) -> None:
    headers = [("blob", b"\xff\xfe"), ("event-type", b"x")]
    [subscriber] = [
        s
        for s in harness.bus.broker.subscribers
        if isinstance(s, DefaultSubscriber) and TOPIC in s.topic_names
    ]

    await subscriber.process_message(_record(b"garbage", headers))

    [letter] = harness.seen.dead
    assert [(h.key, h.value) for h in letter.headers] == headers
    assert letter.offset == 41


async def test_the_handler_runs_in_the_producers_trace(harness: Harness) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        await harness.bus.publish(TOPIC, StringValue(value="traced"), key="k")

    assert harness.seen.trace_ids == [span.get_span_context().trace_id]


async def test_without_trace_headers_the_envelope_carries_the_trace(harness: Harness) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        envelope = seal(
            StringValue(value="relayed"), key="k", producer="p", trace_context=trace_carrier()
        )
    await harness.send_raw(envelope.SerializeToString())

    assert harness.seen.trace_ids == [span.get_span_context().trace_id]


async def test_a_failed_dead_letter_write_fails_the_record_so_it_is_read_again() -> None:
    """The record must not be acknowledged: FastStream then rewinds to it (nack)."""
    bus = Bus("test", settings=BusSettings(producer="test/unit"))
    bus.consumer(TOPIC, group=GROUP)

    @bus.broker.subscriber(dead_letter_topic(TOPIC))
    async def dead_letter_topic_is_down(body: bytes) -> None:
        raise ConnectionError("no leader for test.bus.unit.dlq")

    async with TestKafkaBroker(bus.broker):
        with pytest.raises(ConnectionError, match="no leader"):
            await bus.broker.publish(b"garbage", TOPIC, key=b"k")


async def test_a_second_handler_for_one_type_is_refused(harness: Harness) -> None:
    async def again(payload: StringValue, envelope: Envelope) -> None: ...

    with pytest.raises(ValueError, match=r"payload_type: google\.protobuf\.StringValue"):
        harness.consumer.on(StringValue)(again)


def _record(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=41,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


def test_one_group_gets_one_consumer_per_topic() -> None:
    bus = Bus("test")
    bus.consumer(TOPIC, group=GROUP)
    with pytest.raises(ValueError, match=f"group: '{GROUP}' already consumes"):
        bus.consumer(TOPIC, group=GROUP)
