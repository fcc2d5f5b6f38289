"""Commit-to-handled latency: from a state change's commit to its consumer's commit.

One event at a time, each into an idle pipeline (:data:`~bench.bus.arrivals.SETTLE`),
the way the dispatch path runs: a transaction stores a state change (a ``workflows``
row) and enqueues its event; the clock starts when the commit returns. The
relay wakes on ``NOTIFY``, publishes, the Bus consumer in another group claims the
event in its inbox and applies it in its own transaction; the clock stops when
that commit returns. Producer, relay and consumer share this process's event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.bus.arrivals import SETTLE, Arrivals
from bench.bus.plan import Plan
from bench.bus.stage import Stage, running
from bench.bus.stats import Distribution
from bench.bus.workload import PRODUCER, sealed
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged
from strata.core import kafka
from strata.core.bus import Bus
from strata.core.inbox import claim
from strata.core.outbox import Outbox, OutboxRelay
from strata.core.settings import BusSettings

CONSUMER = "flow"


@dataclass(frozen=True)
class FlowResult:
    commit_to_handled: Distribution


async def measure(stage: Stage, plan: Plan) -> FlowResult:
    """Warm up, then time ``plan.latency_samples`` events one after another."""
    topic = await stage.topic("flow", dead_letters=True)
    arrivals = Arrivals()
    bus = _consuming_bus(stage, topic, arrivals)
    envelopes = sealed(plan.warmup + plan.latency_samples)
    async with kafka.producer(stage.kafka) as producer, bus:
        relay = OutboxRelay(stage.pool, stage.schema, producer)
        async with running(relay.run()):
            samples = [await _one(stage, topic, arrivals, e) for e in envelopes]
    return FlowResult(Distribution.of(samples[plan.warmup :]))


def _consuming_bus(stage: Stage, topic: str, arrivals: Arrivals) -> Bus:
    bus = Bus("bench", kafka=stage.kafka, settings=BusSettings(producer="bench/flow"))

    @bus.consumer(topic, group=stage.group(CONSUMER)).on(TaskStateChanged)
    async def on_change(change: TaskStateChanged, envelope: Envelope) -> None:
        async with stage.pool.acquire() as conn, conn.transaction():
            if await claim(conn, stage.schema, envelope.event_id, consumer=CONSUMER):
                await conn.execute(
                    f"INSERT INTO {stage.quoted}.applied VALUES ($1, $2, $3)",
                    envelope.event_id,
                    change.attempt.run_id,
                    int(change.state),
                )
        arrivals.arrived(envelope.event_id)

    return bus


async def _one(stage: Stage, topic: str, arrivals: Arrivals, envelope: Envelope) -> float:
    """Commit a state change with its event; seconds until the consumer's commit returned."""
    arrival = arrivals.expect(envelope.event_id)
    async with stage.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"INSERT INTO {stage.quoted}.workflows (name, spec) VALUES ($1, $2)",
            envelope.event_id,
            b"",
        )
        await Outbox(stage.schema, PRODUCER).enqueue(conn, topic, envelope)
    committed = time.perf_counter()
    handled = await arrivals.wait(arrival, "commit to handled")
    await asyncio.sleep(SETTLE)
    return handled - committed
