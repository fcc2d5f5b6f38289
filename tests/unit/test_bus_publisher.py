"""What a published record carries, on FastStream's in-memory broker.

Consumers and Kafka tools rely on it: the envelope's fields, the key, and the
``event-type``/``event-id``/``traceparent`` headers; the outbox relies on sealed
bytes going out unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry import trace

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Bus
from strata.core.envelope import open_envelope, seal
from strata.core.settings import BusSettings
from strata.core.telemetry import configure_tracing, trace_carrier
from strata.core.topics import TASKS_EVENTS

TOPIC = TASKS_EVENTS.name


@dataclass
class Wire:
    """Records as they left the producer: (key, value, headers)."""

    records: list[tuple[bytes | None, bytes, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
async def bus_and_wire() -> AsyncIterator[tuple[Bus, Wire]]:
    configure_tracing("test")
    bus = Bus("scheduler", settings=BusSettings(producer="scheduler/host-1"))
    wire = Wire()

    @bus.broker.subscriber(TOPIC)
    async def record(message: KafkaMessage) -> None:
        raw = message.raw_message
        assert isinstance(raw, ConsumerRecord)
        wire.records.append((raw.key, raw.value, message.headers))

    async with TestKafkaBroker(bus.broker):
        yield bus, wire


async def test_publish_seals_the_message_in_an_envelope(bus_and_wire: tuple[Bus, Wire]) -> None:
    bus, wire = bus_and_wire
    sent = await bus.publish(TASKS_EVENTS, StringValue(value="done"), key="run-7")

    [(key, value, headers)] = wire.records
    event = open_envelope(value)
    assert key == b"run-7"
    assert event.payload == StringValue(value="done")
    assert event.envelope.event_id == sent.event_id
    assert event.envelope.producer == "scheduler/host-1"
    assert event.envelope.key == "run-7"
    assert event.envelope.schema_version == 1
    assert headers[HEADER_EVENT_TYPE] == "google.protobuf.StringValue"
    assert headers[HEADER_EVENT_ID] == sent.event_id


async def test_the_trace_travels_in_headers_and_envelope(bus_and_wire: tuple[Bus, Wire]) -> None:
    bus, wire = bus_and_wire
    with trace.get_tracer("test").start_as_current_span("request") as span:
        await bus.publish(TOPIC, StringValue(value="x"), key="k")

    [(_, value, headers)] = wire.records
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert trace_id in headers["traceparent"]
    assert trace_id in open_envelope(value).envelope.trace_context["traceparent"]


async def test_sealed_bytes_go_out_unchanged_with_the_envelope_key(
    bus_and_wire: tuple[Bus, Wire],
) -> None:
    bus, wire = bus_and_wire
    with trace.get_tracer("test").start_as_current_span("request") as span:
        sealed = seal(
            StringValue(value="x"), key="run-9", producer="outbox", trace_context=trace_carrier()
        )
    data = sealed.SerializeToString()

    await bus.publish_sealed(TOPIC, data)

    [(key, value, headers)] = wire.records
    assert (key, value) == (b"run-9", data)
    assert headers[HEADER_EVENT_ID] == sealed.event_id
    assert format(span.get_span_context().trace_id, "032x") in headers["traceparent"]


async def test_an_empty_key_is_refused_by_name(bus_and_wire: tuple[Bus, Wire]) -> None:
    bus, wire = bus_and_wire
    with pytest.raises(ValueError, match="key must be set"):
        await bus.publish(TOPIC, StringValue(value="x"), key="")
    with pytest.raises(ValueError, match="key must be set"):
        await bus.publish_sealed(TOPIC, Envelope())
    assert wire.records == []


async def test_bytes_that_are_no_envelope_are_refused(bus_and_wire: tuple[Bus, Wire]) -> None:
    bus, _ = bus_and_wire
    with pytest.raises(ValueError, match="envelope: bytes are not"):
        await bus.publish_sealed(TOPIC, b"\xff\xff", key="k")


async def test_an_empty_topic_is_refused_by_name(bus_and_wire: tuple[Bus, Wire]) -> None:
    bus, _ = bus_and_wire
    with pytest.raises(ValueError, match="topic must name"):
        await bus.publish("", StringValue(value="x"), key="k")
