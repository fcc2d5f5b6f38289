"""Events per second through a consumer that de-duplicates by event id in its inbox.

The topic is filled first with records of which every 10th redelivers an earlier
event (:func:`bench.bus.workload.with_redeliveries`). Each round a fresh consumer
group and a fresh inbox consumer name read it all, and the clock runs from the
first record received to the last one handled. Three consumers:

- ``Bus batch``: the :class:`~strata.core.bus.Bus` consumer with a batch handler
  (``on_batch``), the path services take for throughput: one transaction per batch
  (``claim_many`` + the state change); the Bus commits offsets in the background.
- ``aiokafka batch`` (its peer): an aiokafka consumer that applies each fetched
  batch the same way, then commits the batch's offsets and waits for the commit.
- ``Bus per event``: the Bus consumer with a handler per event: one transaction
  per event (``claim`` + the state change), partitions side by side. Its peer is
  the same handler called without Kafka, as many at a time as the topic has
  partitions: the most any per-event consumer of this topic could do here.

Batch rounds alternate which of the two goes first. Every consumer must handle
each distinct event exactly once; the run stops with an error if the counts say
otherwise.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from bench.bus.plan import Plan
from bench.bus.stage import PARTITIONS, Stage
from bench.bus.stats import Rates, paired_ratio, rate
from bench.bus.workload import state_change, unique_count, with_redeliveries
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged
from strata.core import kafka
from strata.core.bus import Bus
from strata.core.envelope import Event, open_envelope
from strata.core.inbox import claim, claim_many
from strata.core.migrations import DbConnection
from strata.core.settings import BusSettings

BATCH = BusSettings().max_batch
"""Most records a batch consumer applies in one transaction: the Bus's default fetch."""
TIMEOUT = 120.0
"""A round that takes longer has hung; the run stops with an error instead."""


@dataclass
class Meter:
    """Counts what one round handled and when the first and last records were seen."""

    expected: int
    received: int = 0
    fresh: int = 0
    started: float = 0.0
    finished: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def receive(self, count: int = 1) -> None:
        if not self.received:
            self.started = time.perf_counter()
        self.received += count

    def handled(self, fresh: int) -> None:
        self.fresh += fresh
        if self.received >= self.expected:
            self.finished = time.perf_counter()
            self.done.set()

    def rate(self) -> float:
        return rate(self.received, self.finished - self.started)


@dataclass(frozen=True)
class DedupResult:
    records: int
    distinct: int
    per_event_records: int
    per_event: Rates
    handler_alone: Rates
    """The per-event handler without Kafka, one caller per partition."""
    per_event_ratio: float
    """Median over rounds of Bus per event / handler alone events per second."""
    bus_batch: Rates
    batch: Rates
    """The aiokafka batch consumer, the Bus batch consumer's peer."""
    ratio: float
    """Median over rounds of Bus batch / aiokafka batch events per second."""


async def measure(stage: Stage, plan: Plan) -> DedupResult:
    """Interleaved rounds of both batch consumers, then rounds of the per-event one."""
    batch_topic = await _filled(stage, "dedup-batch", plan.throughput_events)
    per_event_topic = await _filled(stage, "dedup-event", plan.per_event_events)
    bus_batch: list[float] = []
    batch: list[float] = []
    for n in range(plan.throughput_rounds):
        rounds = [
            (bus_batch, _bus_batch_round(stage, batch_topic, plan.throughput_events, f"bus-{n}")),
            (batch, _batch_round(stage, batch_topic, plan.throughput_events, name=f"batch-{n}")),
        ]
        for rates, work in rounds if n % 2 == 0 else rounds[::-1]:
            rates.append(await work)
    per_event: list[float] = []
    alone: list[float] = []
    for n in range(plan.per_event_rounds):
        total = plan.per_event_events
        per_event.append(await _per_event_round(stage, per_event_topic, total, name=f"event-{n}"))
        alone.append(await _handler_round(stage, total, name=f"alone-{n}"))
    return DedupResult(
        records=plan.throughput_events,
        distinct=unique_count(plan.throughput_events),
        per_event_records=plan.per_event_events,
        per_event=Rates.of(per_event),
        handler_alone=Rates.of(alone),
        per_event_ratio=paired_ratio(per_event, alone),
        bus_batch=Rates.of(bus_batch),
        batch=Rates.of(batch),
        ratio=paired_ratio(bus_batch, batch),
    )


async def _filled(stage: Stage, purpose: str, total: int) -> str:
    """A topic (with its dead-letter topic) holding ``total`` records, repeats included."""
    topic = await stage.topic(purpose, dead_letters=True)
    records = with_redeliveries(total)
    async with kafka.producer(stage.kafka) as producer:
        acks = [await producer.send(topic, r.value, key=r.key, headers=r.headers) for r in records]
        await asyncio.gather(*acks)
    return topic


async def _per_event_round(stage: Stage, topic: str, total: int, *, name: str) -> float:
    meter = Meter(expected=total)
    bus = Bus("bench", kafka=stage.kafka, settings=BusSettings(producer=f"bench/{name}"))

    @bus.consumer(topic, group=stage.group(name)).on(TaskStateChanged)
    async def on_change(change: TaskStateChanged, envelope: Envelope) -> None:
        meter.receive()
        meter.handled(await _handle_one(stage, name, change, envelope.event_id))

    async with bus, asyncio.timeout(TIMEOUT):
        await meter.done.wait()
    _check(meter, total)
    return meter.rate()


async def _handler_round(stage: Stage, total: int, *, name: str) -> float:
    """The per-event handler over ``total`` new events, one caller per partition."""
    events = [(state_change(n), str(uuid.uuid4())) for n in range(total)]

    async def caller(share: Sequence[tuple[TaskStateChanged, str]]) -> None:
        for change, event_id in share:
            await _handle_one(stage, name, change, event_id)

    started = time.perf_counter()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(caller(events[p::PARTITIONS]) for p in range(PARTITIONS)))
    return rate(total, time.perf_counter() - started)


async def _handle_one(stage: Stage, name: str, change: TaskStateChanged, event_id: str) -> int:
    """The per-event handler: claim the event and apply it, in one transaction."""
    async with stage.pool.acquire() as conn, conn.transaction():
        fresh = await claim(conn, stage.schema, event_id, consumer=name)
        if fresh:
            await _apply(conn, stage, [event_id], [change])
    return int(fresh)


async def _bus_batch_round(stage: Stage, topic: str, total: int, name: str) -> float:
    meter = Meter(expected=total)
    bus = Bus("bench", kafka=stage.kafka, settings=BusSettings(producer=f"bench/{name}"))

    @bus.consumer(topic, group=stage.group(name)).on_batch(TaskStateChanged)
    async def on_changes(events: Sequence[tuple[TaskStateChanged, Envelope]]) -> None:
        meter.receive(len(events))
        changes = {envelope.event_id: change for change, envelope in events}
        async with stage.pool.acquire() as conn, conn.transaction():
            fresh = await claim_many(conn, stage.schema, name, changes)
            await _apply(conn, stage, list(fresh), [changes[event_id] for event_id in fresh])
        meter.handled(len(fresh))

    async with bus, asyncio.timeout(TIMEOUT):
        await meter.done.wait()
    _check(meter, total)
    return meter.rate()


async def _batch_round(stage: Stage, topic: str, total: int, *, name: str) -> float:
    meter = Meter(expected=total)
    consumer = kafka.consumer(stage.kafka, topic, group_id=stage.group(name))
    async with consumer, asyncio.timeout(TIMEOUT):
        while not meter.done.is_set():
            await _apply_batch(stage, consumer, meter, name)
    _check(meter, total)
    return meter.rate()


async def _apply_batch(stage: Stage, consumer: AIOKafkaConsumer, meter: Meter, name: str) -> None:
    """Fetch a batch, handle its new events in one transaction, then commit its offsets."""
    fetched = await consumer.getmany(timeout_ms=1_000, max_records=BATCH)
    records = [r for partition in fetched.values() for r in partition]
    if not records:
        return
    meter.receive(len(records))
    events = {event.event_id: event for event in (open_envelope(r.value) for r in records)}
    async with stage.pool.acquire() as conn, conn.transaction():
        fresh = await claim_many(conn, stage.schema, name, events)
        new = [events[event_id] for event_id in fresh]
        await _apply(conn, stage, [e.event_id for e in new], [_change(e) for e in new])
    await consumer.commit()
    meter.handled(len(fresh))


def _change(event: Event) -> TaskStateChanged:
    if not isinstance(event.payload, TaskStateChanged):
        raise TypeError(f"expected a TaskStateChanged, got a {event.type}")
    return event.payload


async def _apply(
    conn: DbConnection, stage: Stage, event_ids: Sequence[str], changes: Sequence[TaskStateChanged]
) -> None:
    """The handler's own state change: one row per event, in one statement."""
    await conn.execute(
        f"INSERT INTO {stage.quoted}.applied (event_id, run_id, state) "
        "SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])",
        list(event_ids),
        [c.attempt.run_id for c in changes],
        [int(c.state) for c in changes],
    )


def _check(meter: Meter, total: int) -> None:
    """Each distinct event handled once: repeats dropped, nothing lost."""
    if meter.received != total or meter.fresh != unique_count(total):
        raise RuntimeError(
            f"the consumer received {meter.received} of {total} records and handled "
            f"{meter.fresh} events; {unique_count(total)} were distinct"
        )
