"""What happens to each record a consumer reads, with an in-memory loopback producer.

Handled, skipped, retried or dead-lettered with the reason: every record ends in
exactly one of these, is reported settled only then, and the consumer goes on
with the next one; an outage settles nothing and dead-letters nothing. Published
records reach the consumer through a loopback producer, the way the Bus's reader
hands them over; records that no publisher would write are handed to
:meth:`Consumer.process` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg.exceptions
import pytest
from aiokafka import ConsumerRecord
from google.protobuf.any_pb2 import Any as AnyPayload
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, Int32Value, Int64Value, StringValue
from opentelemetry import trace

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus import Bus, Consumer, Outage, Publisher
from strata.core.bus.publisher import Headers
from strata.core.envelope import seal
from strata.core.errors import DependencyUnavailableError, PermanentError
from strata.core.metrics import Metrics
from strata.core.settings import BusSettings
from strata.core.telemetry import configure_tracing, trace_carrier
from strata.core.topics import dead_letter_topic

TOPIC = "test.bus.unit"
GROUP = "test-group"
ATTEMPTS = 4


@dataclass
class Seen:
    """What the handlers received, what reached the dead-letter topic, what settled."""

    handled: list[tuple[Message, Envelope]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    trace_ids: list[int] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)
    """Offsets reported settled, in order."""


@dataclass
class Harness:
    consumer: Consumer
    seen: Seen
    metrics: Metrics
    offset: int = 0
    """Offset of the next record published through the loopback."""

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Headers
    ) -> None:
        """The loopback producer: events go to the consumer, dead letters to ``seen``."""
        if topic == dead_letter_topic(TOPIC):
            self.seen.dead.append(DeadLetter.FromString(value))
            return
        record = _record(value, self.offset, headers)
        self.offset += 1
        await self.consumer.process([record], self.settle)

    async def publish(self, payload: Message) -> Envelope:
        return await Publisher(self, "test/unit").publish(payload, topic=TOPIC, key="k")

    async def send_raw(self, value: bytes, headers: Headers | None = None) -> None:
        await self.send_and_wait(TOPIC, value, key=b"k", headers=headers or [])

    async def process(self, *values: bytes) -> None:
        """Hand records holding ``values`` (offsets 0, 1, ...) to the consumer at once."""
        records = [_record(value, offset) for offset, value in enumerate(values)]
        await self.consumer.process(records, self.settle)

    def settle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.seen.settled.append(record.offset)

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "strata_events_total", {"topic": TOPIC, "group": GROUP, "outcome": outcome}
        )
        return value or 0.0


def _consumer(settings: BusSettings, seen: Seen, metrics: Metrics | None = None) -> Consumer:
    async def dead_letters(letter: DeadLetter) -> None:
        seen.dead.append(letter)

    return Consumer(
        TOPIC,
        GROUP,
        dead_letters=dead_letters,
        producer="test/unit",
        settings=settings,
        metrics=metrics,
    )


@pytest.fixture
def harness() -> Harness:
    configure_tracing("test")
    settings = BusSettings(
        producer="test/unit", retry_attempts=ATTEMPTS, retry_backoff_initial=0.001
    )
    seen, metrics = Seen(), Metrics()
    consumer = _consumer(settings, seen, metrics)
    harness = Harness(consumer, seen, metrics)

    @consumer.on(StringValue)
    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        seen.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        seen.handled.append((payload, envelope))

    return harness


async def test_an_event_reaches_the_handler_of_its_type(harness: Harness) -> None:
    sent = await harness.publish(StringValue(value="hello"))

    [(payload, envelope)] = harness.seen.handled
    assert payload == StringValue(value="hello")
    assert envelope.event_id == sent.event_id
    assert envelope.producer == "test/unit"
    assert envelope.key == "k"
    assert harness.seen.dead == []


async def test_garbage_bytes_are_dead_lettered_whole(harness: Harness) -> None:
    await harness.send_raw(b"\xff\x00 not an envelope")
    await harness.publish(StringValue(value="next"))

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


async def test_an_event_type_unknown_to_this_process_is_skipped(harness: Harness) -> None:
    """Nobody here can handle it, so it is no one's poison (a newer producer's event)."""
    envelope = seal(StringValue(value="x"), key="k", producer="elsewhere")
    envelope.type = "strata.nowhere.v1.Ghost"
    envelope.payload.CopyFrom(
        AnyPayload(type_url="type.googleapis.com/strata.nowhere.v1.Ghost", value=b"\x08\x01")
    )
    await harness.send_raw(envelope.SerializeToString())

    assert (harness.seen.dead, harness.seen.handled, harness.seen.settled) == ([], [], [0])
    assert harness.count("skipped") == 1


async def test_an_unhandled_type_is_skipped_from_its_header_without_decoding(
    harness: Harness,
) -> None:
    """The value is garbage: opening it would dead-letter it, so it was never opened."""
    headers = [("event-type", b"google.protobuf.Int64Value")]

    await harness.send_raw(b"\xff garbage no decoder would take", headers)

    assert (harness.seen.dead, harness.seen.settled) == ([], [0])
    assert harness.count("skipped") == 1


async def test_a_handled_type_that_does_not_decode_is_dead_lettered(harness: Harness) -> None:
    headers = [("event-type", b"google.protobuf.StringValue")]

    await harness.send_raw(b"\xff garbage", headers)

    [letter] = harness.seen.dead
    assert letter.cause == DeadLetter.CAUSE_MALFORMED
    assert harness.seen.settled == [0]
    assert harness.count("dead_lettered") == 1


async def test_a_payload_that_does_not_decode_is_dead_lettered(harness: Harness) -> None:
    envelope = seal(StringValue(value="x"), key="k", producer="elsewhere")
    envelope.payload.value = b"\x0a\xff"  # field 1, length 255, and nothing after
    await harness.send_raw(envelope.SerializeToString())

    [letter] = harness.seen.dead
    assert letter.cause == DeadLetter.CAUSE_MALFORMED
    assert "payload does not decode as 'google.protobuf.StringValue'" in letter.reason
    assert harness.seen.handled == []


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

    await harness.publish(Int64Value(value=-1))

    [letter] = harness.seen.dead
    assert calls == 1
    assert letter.cause == DeadLetter.CAUSE_REJECTED
    assert letter.reason == "PermanentError: number -1 is out of range"
    assert letter.attempts == 1
    assert letter.event_type == "google.protobuf.Int64Value"


async def test_an_error_is_retried_until_it_passes(harness: Harness) -> None:
    calls = 0

    @harness.consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("flaky")

    await harness.publish(Int64Value(value=7))

    assert calls == 3
    assert harness.seen.dead == []


async def test_an_error_that_never_passes_ends_in_the_dead_letters(harness: Harness) -> None:
    calls = 0

    @harness.consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("feature store did not answer")

    await harness.publish(Int64Value(value=7))

    [letter] = harness.seen.dead
    assert calls == ATTEMPTS
    assert letter.cause == DeadLetter.CAUSE_RETRIES_EXHAUSTED
    assert letter.attempts == ATTEMPTS
    assert "KeyError: 'feature store did not answer'" in letter.reason
    assert harness.count("dead_lettered") == 1


@pytest.mark.parametrize(
    "outage",
    [
        ConnectionRefusedError(111, "connect call failed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        DependencyUnavailableError("model store is down"),
    ],
    ids=type,
)
async def test_an_outage_settles_nothing_from_its_record_on(
    harness: Harness, outage: Exception
) -> None:
    """No dead letter, no in-place retries, nothing after it handled: the Bus pauses the
    partition and reads the record again, so the order of its key holds."""
    calls = 0

    @harness.consumer.on(Int64Value)
    async def on_number(payload: Int64Value, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        raise outage

    values = [_sealed(StringValue(value="a")), _sealed(Int64Value(value=1))]
    with pytest.raises(Outage) as raised:
        await harness.process(*values, _sealed(StringValue(value="b")))

    assert (raised.value.offset, raised.value.error) == (1, outage)
    assert calls == 1
    assert harness.seen.dead == []
    assert [p for p, _ in harness.seen.handled] == [StringValue(value="a")]
    assert harness.seen.settled == [0]


async def test_an_event_type_without_a_handler_here_is_skipped(harness: Harness) -> None:
    await harness.publish(Int64Value(value=1))

    assert harness.seen.handled == []
    assert harness.seen.dead == []
    assert harness.seen.settled == [0]


async def test_a_binary_header_does_not_stop_the_record(harness: Harness) -> None:
    headers = [
        ("blob", b"\xff\xfe"),
        ("traceparent", b"\xff"),
        ("event-type", b"google.protobuf.StringValue"),
    ]

    await harness.consumer.process([_record(b"garbage", 41, headers)], harness.settle)

    [letter] = harness.seen.dead
    assert [(h.key, h.value) for h in letter.headers] == headers
    assert letter.offset == 41
    assert harness.seen.settled == [41]


async def test_the_handler_runs_in_the_producers_trace(harness: Harness) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        await harness.publish(StringValue(value="traced"))

    assert harness.seen.trace_ids == [span.get_span_context().trace_id]


async def test_an_event_published_outside_any_trace_starts_one(harness: Harness) -> None:
    sent = await harness.publish(StringValue(value="untraced"))

    [trace_id] = harness.seen.trace_ids
    assert trace_id != 0
    assert format(trace_id, "032x") in sent.trace_context["traceparent"]


async def test_without_trace_headers_the_envelope_carries_the_trace(harness: Harness) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        envelope = seal(
            StringValue(value="relayed"), key="k", producer="p", trace_context=trace_carrier()
        )
    await harness.send_raw(envelope.SerializeToString())

    assert harness.seen.trace_ids == [span.get_span_context().trace_id]


async def test_a_failed_dead_letter_write_leaves_the_record_unsettled() -> None:
    """The Bus then reads the partition again from that record."""
    settled: list[int] = []

    async def dead_letter_topic_is_down(letter: DeadLetter) -> None:
        raise ConnectionError("no leader for test.bus.unit.dlq")

    consumer = Consumer(
        TOPIC,
        GROUP,
        dead_letters=dead_letter_topic_is_down,
        producer="test/unit",
        settings=BusSettings(),
    )
    consumer.on(StringValue)(_ignore)
    records = [_record(_sealed(StringValue(value="ok")), 0), _record(b"garbage", 1)]
    with pytest.raises(ConnectionError, match="no leader"):
        await consumer.process(records, lambda record: settled.append(record.offset))

    assert settled == [0]


async def _ignore(payload: Message, envelope: Envelope) -> None:
    """A handler that accepts every event."""


async def test_processing_stops_before_the_next_record_once_halted(harness: Harness) -> None:
    values = [_sealed(StringValue(value=str(n))) for n in range(4)]

    def halted() -> bool:
        return len(harness.seen.handled) == 2

    records = [_record(value, offset) for offset, value in enumerate(values)]
    await harness.consumer.process(records, harness.settle, halted)

    assert [p for p, _ in harness.seen.handled] == [StringValue(value=n) for n in "01"]
    assert harness.seen.settled == [0, 1]


async def test_a_second_handler_for_one_type_is_refused(harness: Harness) -> None:
    async def again(payload: StringValue, envelope: Envelope) -> None: ...

    async def batch(events: Sequence[tuple[StringValue, Envelope]]) -> None: ...

    with pytest.raises(ValueError, match=r"payload_type: google\.protobuf\.StringValue"):
        harness.consumer.on(StringValue)(again)
    with pytest.raises(ValueError, match=r"payload_type: google\.protobuf\.StringValue"):
        harness.consumer.on_batch(StringValue)(batch)


def test_one_group_gets_one_consumer_per_topic() -> None:
    bus = Bus("test")
    bus.consumer(TOPIC, group=GROUP)
    with pytest.raises(ValueError, match=f"group: '{GROUP}' already consumes"):
        bus.consumer(TOPIC, group=GROUP)


@dataclass
class Batches:
    """A batch handler of Int64Value events that applies a batch only if all of it passes."""

    calls: list[list[int]] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    """Raised by the next calls, one each, before any poison check."""
    poison: int | None = None

    async def __call__(self, events: Sequence[tuple[Int64Value, Envelope]]) -> None:
        values = [payload.value for payload, _ in events]
        self.calls.append(values)
        if self.failures:
            raise self.failures.pop(0)
        if self.poison in values:
            raise ValueError(f"cannot apply {self.poison}")
        if any(value < 0 for value in values):
            raise PermanentError("negative numbers are refused")
        self.applied.extend(values)


@pytest.fixture
def batches(harness: Harness) -> Batches:
    handler = Batches()
    harness.consumer.on_batch(Int64Value)(handler)
    return handler


def _numbers(*values: int) -> list[bytes]:
    return [_sealed(Int64Value(value=value)) for value in values]


async def test_consecutive_events_go_to_the_batch_handler_together(
    harness: Harness, batches: Batches
) -> None:
    await harness.process(*_numbers(1, 2, 3, 4))

    assert batches.calls == [[1, 2, 3, 4]]
    assert batches.applied == [1, 2, 3, 4]
    assert harness.seen.settled == [3]


async def test_a_batch_holds_at_most_max_batch_events() -> None:
    consumer = _consumer(BusSettings(producer="test/unit", max_batch=2), Seen())
    batches = Batches()
    consumer.on_batch(Int64Value)(batches)
    settled: list[int] = []

    records = [_record(value, offset) for offset, value in enumerate(_numbers(1, 2, 3, 4, 5))]
    await consumer.process(records, lambda record: settled.append(record.offset))

    assert batches.calls == [[1, 2], [3, 4], [5]]
    assert settled == [1, 3, 4]


async def test_events_nobody_here_handles_ride_along_in_a_batch(
    harness: Harness, batches: Batches
) -> None:
    await harness.process(*_numbers(1), _sealed(BoolValue(value=True)), *_numbers(2))

    assert batches.calls == [[1, 2]]
    assert harness.seen.settled == [2]


async def test_events_of_several_types_with_one_batch_handler_go_together_in_order(
    harness: Harness, batches: Batches
) -> None:
    """A task's placed, started and finished reports interleave; one handler takes all."""
    harness.consumer.on_batch(Int32Value)(batches)  # type: ignore[arg-type]
    other = Batches()
    harness.consumer.on_batch(BoolValue)(other)  # type: ignore[arg-type]

    await harness.process(
        *_numbers(1),
        _sealed(Int32Value(value=2)),
        *_numbers(3),
        _sealed(BoolValue(value=True)),
        _sealed(Int32Value(value=5)),
    )

    assert batches.calls == [[1, 2, 3], [5]]
    assert other.calls == [[True]]
    assert harness.seen.settled == [2, 3, 4]


async def test_an_event_for_another_handler_ends_the_batch_in_order(
    harness: Harness, batches: Batches
) -> None:
    order: list[str] = []

    @harness.consumer.on(BoolValue)
    async def on_flag(payload: BoolValue, envelope: Envelope) -> None:
        order.append(f"flag after {batches.applied}")

    await harness.process(*_numbers(1, 2), _sealed(BoolValue(value=True)), *_numbers(3))

    assert batches.calls == [[1, 2], [3]]
    assert order == ["flag after [1, 2]"]
    assert harness.seen.settled == [1, 2, 3]


async def test_a_malformed_record_in_a_batch_is_dead_lettered_alone(
    harness: Harness, batches: Batches
) -> None:
    await harness.process(*_numbers(1), b"\xff garbage", *_numbers(2))

    [letter] = harness.seen.dead
    assert (letter.offset, letter.cause) == (1, DeadLetter.CAUSE_MALFORMED)
    assert batches.applied == [1, 2]
    assert harness.seen.settled == [0, 1, 2]


async def test_a_batch_error_retries_the_whole_batch(harness: Harness, batches: Batches) -> None:
    batches.failures = [RuntimeError("flaky")] * 2

    await harness.process(*_numbers(1, 2, 3))

    assert batches.calls == [[1, 2, 3]] * 3
    assert batches.applied == [1, 2, 3]
    assert harness.seen.dead == []


async def test_a_permanent_batch_error_isolates_the_poison_event(
    harness: Harness, batches: Batches
) -> None:
    await harness.process(*_numbers(1, -1, 2))

    assert batches.calls == [[1, -1, 2], [1], [-1], [2]]
    assert batches.applied == [1, 2]
    [letter] = harness.seen.dead
    assert (letter.offset, letter.cause, letter.attempts) == (1, DeadLetter.CAUSE_REJECTED, 1)
    assert letter.reason == "PermanentError: negative numbers are refused"
    assert harness.seen.settled == [0, 1, 2]


async def test_a_batch_error_that_outlasts_the_retries_isolates_the_poison_event(
    harness: Harness, batches: Batches
) -> None:
    batches.poison = 13

    await harness.process(*_numbers(1, 13, 2))

    assert batches.calls == [[1, 13, 2]] * ATTEMPTS + [[1]] + [[13]] * ATTEMPTS + [[2]]
    assert batches.applied == [1, 2]
    [letter] = harness.seen.dead
    assert (letter.offset, letter.cause) == (1, DeadLetter.CAUSE_RETRIES_EXHAUSTED)
    assert "ValueError: cannot apply 13" in letter.reason


def _sealed(payload: Message) -> bytes:
    return seal(payload, key="k", producer="elsewhere").SerializeToString()


def _record(
    value: bytes, offset: int, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers or [],
    )


async def test_a_batch_outage_pauses_at_its_first_event_without_going_one_by_one(
    harness: Harness, batches: Batches
) -> None:
    batches.failures = [ConnectionResetError("database failing over")]

    with pytest.raises(Outage) as raised:
        await harness.process(_sealed(StringValue(value="a")), *_numbers(1, 2, 3))

    assert raised.value.offset == 1
    assert batches.calls == [[1, 2, 3]]
    assert harness.seen.settled == [0]
    assert harness.seen.dead == []


async def test_the_one_by_one_fallback_stops_once_halted(
    harness: Harness, batches: Batches
) -> None:
    """A rebalance must not wait for 500 events handled one by one: the rest is left
    unsettled, for the partition's next owner to read."""

    def halted() -> bool:
        return len(batches.calls) >= 2  # the batch call and one event of the fallback

    records = [_record(value, offset) for offset, value in enumerate(_numbers(1, -1, 2, 3))]
    await harness.consumer.process(records, harness.settle, halted)

    assert batches.calls == [[1, -1, 2, 3], [1]]
    assert harness.seen.settled == [0]
    assert harness.seen.dead == []


async def test_outcomes_are_counted_per_topic_and_group(harness: Harness, batches: Batches) -> None:
    await harness.process(
        _sealed(StringValue(value="a")),
        _sealed(BoolValue(value=True)),
        *_numbers(1, 2),
        b"garbage",
    )

    assert harness.count("handled") == 3
    assert harness.count("skipped") == 1
    assert harness.count("dead_lettered") == 1
