"""One hop from a producer to a handler, by the three ways a service could send an event.

Each path owns a topic and a consumer group and sends with an idempotent
``acks=all`` producer, waiting for the acknowledgement. Every consumer commits in
the background (the aiokafka paths with aiokafka's auto-commit, the Bus its own
way), so no hop waits for an offset commit. They differ in what rides along:

- :func:`bare`: payload bytes on plain aiokafka; the peer.
- :func:`enveloped`: the same aiokafka clients plus exactly what Strata adds per
  event, with Strata's own code: the envelope sealed and opened, the Bus's
  PRODUCER and CONSUMER spans (:mod:`strata.core.bus.spans`), and the trace
  context in headers and envelope.
- :func:`bus`: :class:`strata.core.bus.Bus`, as services use it: the envelope and
  the spans, its publish path (the same aiokafka producer, routing and
  ``event-type``/``event-id`` headers), the Bus's reader (offsets committed in
  the background), its failure guard and its metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer

from bench.bus.arrivals import Arrivals
from bench.bus.stage import Stage, running
from bench.bus.workload import PRODUCER
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged
from strata.core import kafka
from strata.core.bus import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Bus, spans
from strata.core.envelope import open_envelope, seal
from strata.core.settings import BusSettings

Send = Callable[[str, TaskStateChanged], Awaitable[object]]
"""Publish one event under a key and wait for the broker's acknowledgement."""

GROUP = "bench-hops"
"""The consumer group named on the CONSUMER spans of the enveloped path."""


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
    """What the Bus's publisher does around a send: the span, the sealed bytes, the headers."""
    with spans.sending(topic, key) as carrier:
        envelope = seal(change, key=key, producer=PRODUCER, trace_context=carrier)
        headers = [
            (HEADER_EVENT_TYPE, envelope.type.encode()),
            (HEADER_EVENT_ID, envelope.event_id.encode()),
            *((name, value.encode()) for name, value in carrier.items()),
        ]
        yield envelope.SerializeToString(), headers


def handle_traced(record: Any, arrived: Callable[[str], None]) -> None:
    """What the Bus's consumer does around a handler: open the envelope, run in its span."""
    event = open_envelope(record.value)
    with spans.processing(record, event, GROUP):
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
            return await events.publish(change, topic=topic, key=key)

        yield send


@contextlib.asynccontextmanager
async def _consuming(
    stage: Stage, topic: str, purpose: str, on_record: Callable[[Any], None]
) -> AsyncIterator[None]:
    """A consumer in a fresh group that handles each record, committing in the background."""
    consumer = kafka.consumer(
        stage.kafka, topic, group_id=stage.group(purpose), enable_auto_commit=True
    )
    async with consumer, running(_consume(consumer, on_record)):
        yield


async def _consume(consumer: AIOKafkaConsumer, on_record: Callable[[Any], None]) -> None:
    async for record in consumer:
        on_record(record)
