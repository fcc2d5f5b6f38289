"""One hop from a producer to a handler, by the three ways a service could send an event.

Each path owns a topic and a consumer group, sends with an idempotent ``acks=all``
producer and waits for the acknowledgement, and its consumer commits the offset
after each handled record. They differ only in what rides along:

- :func:`bare`: payload bytes on plain aiokafka; the peer.
- :func:`enveloped`: the same aiokafka clients plus exactly what Strata adds per
  event: the envelope sealed and opened, a PRODUCER and a CONSUMER span, and the
  trace context in headers and envelope.
- :func:`bus`: :class:`strata.core.bus.Bus`, as services use it: the envelope and
  the spans, FastStream's consumer loop and the Bus's retry and dead-letter frame.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer
from opentelemetry import trace

from bench.bus.arrivals import Arrivals
from bench.bus.stage import Stage, running
from bench.bus.workload import PRODUCER
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged
from strata.core import kafka
from strata.core.bus import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Bus
from strata.core.envelope import open_envelope, seal
from strata.core.settings import BusSettings
from strata.core.telemetry import extract_context, inject_headers, trace_carrier

Send = Callable[[str, TaskStateChanged], Awaitable[object]]
"""Publish one event under a key and wait for the broker's acknowledgement."""

_tracer = trace.get_tracer("bench.bus")


@contextlib.asynccontextmanager
async def bare(stage: Stage, arrivals: Arrivals) -> AsyncIterator[Send]:
    """Serialized payload, key, nothing else."""
    topic = await stage.topic("hop-bare")

    def on_record(record: Any) -> None:
        TaskStateChanged.FromString(record.value)
        arrivals.arrived(record.key.decode())

    async with (
        _consuming(stage, topic, "hop-bare", on_record),
        kafka.producer(stage.kafka) as producer,
    ):

        async def send(key: str, change: TaskStateChanged) -> object:
            return await producer.send_and_wait(topic, change.SerializeToString(), key=key.encode())

        yield send


@contextlib.asynccontextmanager
async def enveloped(stage: Stage, arrivals: Arrivals) -> AsyncIterator[Send]:
    """What Strata adds to each event, on the same plain aiokafka clients."""
    topic = await stage.topic("hop-envelope")

    def on_record(record: Any) -> None:
        handle_traced(record, arrivals.arrived)

    async with (
        _consuming(stage, topic, "hop-envelope", on_record),
        kafka.producer(stage.kafka) as producer,
    ):

        async def send(key: str, change: TaskStateChanged) -> object:
            with sending_traced(topic, key, change) as (value, headers):
                return await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)

        yield send


@contextlib.contextmanager
def sending_traced(
    topic: str, key: str, change: TaskStateChanged
) -> Iterator[tuple[bytes, list[tuple[str, bytes]]]]:
    """A PRODUCER span around the send: the sealed bytes and the headers the Bus sends."""
    with _tracer.start_as_current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER) as span:
        envelope = seal(change, key=key, producer=PRODUCER, trace_context=trace_carrier())
        span.set_attributes(_attributes(topic, envelope, "send"))
        headers = [
            (HEADER_EVENT_TYPE, envelope.type.encode()),
            (HEADER_EVENT_ID, envelope.event_id.encode()),
            *inject_headers(),
        ]
        yield envelope.SerializeToString(), headers


def handle_traced(record: Any, arrived: Callable[[str], None]) -> None:
    """Open the envelope and call ``arrived`` in a CONSUMER span continuing the producer's."""
    event = open_envelope(record.value)
    with _tracer.start_as_current_span(
        f"process {record.topic}",
        context=extract_context(record.headers),
        kind=trace.SpanKind.CONSUMER,
        attributes=_attributes(record.topic, event.envelope, "process"),
    ):
        arrived(event.envelope.key)


@contextlib.asynccontextmanager
async def bus(stage: Stage, arrivals: Arrivals) -> AsyncIterator[Send]:
    """The Bus, publishing and consuming as a service does."""
    topic = await stage.topic("hop-bus", dead_letters=True)
    events = Bus("bench", kafka=stage.kafka, settings=BusSettings(producer=PRODUCER))

    @events.consumer(topic, group=stage.group("hop-bus")).on(TaskStateChanged)
    async def on_change(change: TaskStateChanged, envelope: Envelope) -> None:
        arrivals.arrived(envelope.key)

    async with events:

        async def send(key: str, change: TaskStateChanged) -> object:
            return await events.publish(topic, change, key=key)

        yield send


@contextlib.asynccontextmanager
async def _consuming(
    stage: Stage, topic: str, purpose: str, on_record: Callable[[Any], None]
) -> AsyncIterator[None]:
    """A consumer in a fresh group that handles then commits each record, in the background."""
    consumer = kafka.consumer(stage.kafka, topic, group_id=stage.group(purpose))
    async with consumer, running(_consume(consumer, on_record)):
        yield


async def _consume(consumer: AIOKafkaConsumer, on_record: Callable[[Any], None]) -> None:
    async for record in consumer:
        on_record(record)
        await consumer.commit()


def _attributes(topic: str, envelope: Envelope, operation: str) -> dict[str, str]:
    """The messaging attributes the Bus puts on its spans (OpenTelemetry conventions)."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
        "messaging.kafka.message.key": envelope.key,
        "messaging.message.id": envelope.event_id,
    }
