"""Events per second through the outbox relay, beside a bare producer sending the same bytes.

A round of the relay commits the events into the outbox first (timed on its own:
that is the enqueue rate), then starts an :class:`OutboxRelay` and times it until
it has published and deleted every row. A round of the peer sends the very same
records (key, bytes, trace headers) with the very same idempotent ``acks=all``
producer straight from Python, as a service without an outbox would, and waits for
every acknowledgement. Rounds alternate which side goes first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from bench.bus.plan import Plan
from bench.bus.stage import Stage, running
from bench.bus.stats import Rates, paired_ratio, rate
from bench.bus.workload import PRODUCER, Record, record_of, sealed
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core import kafka
from strata.core.outbox import Outbox, OutboxRelay

ENQUEUE_BATCH = 1_000
"""Envelopes per enqueuing transaction: the relay's own batch size."""
POLL = 0.005
"""How often the clock checks whether the relay is done; 5 ms on a round of seconds."""
TIMEOUT = 120.0
"""A round that takes longer has hung; the run stops with an error instead."""


@dataclass(frozen=True)
class RelayResult:
    events: int
    relay: Rates
    bare: Rates
    enqueue: Rates
    ratio: float
    """Median over rounds of relay/bare events per second."""


async def measure(stage: Stage, plan: Plan) -> RelayResult:
    """Interleaved rounds of the relay and its bare peer on one topic."""
    topic = await stage.topic("relay")
    envelopes = sealed(plan.throughput_events)
    records = [record_of(envelope) for envelope in envelopes]
    relayed, bare, enqueued = [], [], []
    async with kafka.producer(stage.kafka) as producer:
        for round_number in range(plan.throughput_rounds):
            if round_number % 2:
                bare.append(await _bare_round(producer, topic, records))
            enqueue_rate, relay_rate = await _relay_round(stage, producer, topic, envelopes)
            enqueued.append(enqueue_rate)
            relayed.append(relay_rate)
            if not round_number % 2:
                bare.append(await _bare_round(producer, topic, records))
    return RelayResult(
        events=len(envelopes),
        relay=Rates.of(relayed),
        bare=Rates.of(bare),
        enqueue=Rates.of(enqueued),
        ratio=paired_ratio(relayed, bare),
    )


async def _relay_round(
    stage: Stage, producer: AIOKafkaProducer, topic: str, envelopes: list[Envelope]
) -> tuple[float, float]:
    """Fill the outbox, then drain it with a relay; return (enqueue, relay) events/s."""
    outbox = Outbox(stage.schema, PRODUCER)
    started = time.perf_counter()
    for first in range(0, len(envelopes), ENQUEUE_BATCH):
        async with stage.pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, topic, *envelopes[first : first + ENQUEUE_BATCH])
    enqueued = time.perf_counter()
    relay = OutboxRelay(stage.pool, stage.schema, producer)
    async with asyncio.timeout(TIMEOUT), running(relay.run()):
        # The relay counts what it published but signals nothing: poll its counter.
        while relay.published < len(envelopes):  # noqa: ASYNC110
            await asyncio.sleep(POLL)
    drained = time.perf_counter()
    left = await stage.pool.fetchval(f"SELECT count(*) FROM {stage.quoted}.outbox")
    if left or relay.published != len(envelopes):
        raise RuntimeError(f"relay published {relay.published} events and left {left} rows")
    return rate(len(envelopes), enqueued - started), rate(len(envelopes), drained - enqueued)


async def _bare_round(producer: AIOKafkaProducer, topic: str, records: list[Record]) -> float:
    """Send every record, then wait for every acknowledgement; return events/s."""
    started = time.perf_counter()
    async with asyncio.timeout(TIMEOUT):
        acks = [
            await producer.send(topic, record.value, key=record.key, headers=record.headers)
            for record in records
        ]
        await asyncio.gather(*acks)
    return rate(len(records), time.perf_counter() - started)
