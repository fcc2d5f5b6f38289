"""Streaming: event produced to its topic → feature readable in Redis, and throughput.

**Freshness.** The run's streamer follows the view's topic. This process produces
one event per new driver at a steady rate (each send scheduled at ``i / rate``
seconds after the start) and learns the moment each driver's hash is written
from Redis **keyspace notifications** (``notify-keyspace-events`` gains ``Kh`` for
the run and gets its old value back after): the notification is published by
the ``HSET`` itself, so the value is readable from that moment. The latency of an
event is the notification's arrival minus the send's call, both on this process's clock.
The first events after the stream has caught up are thrown away as warm-up.

**Throughput.** A second view's topic is filled with a backlog first (ending, in
each partition, with an event for a driver of its own), then the view is applied;
the streamer starts its stream from the topic's beginning. The clock runs from
the stream's first Redis write (a keyspace notification: the end of its first
batch, so start-up is not counted) to the write of the last partition's last
event. Offset commits are not the end: the streamer commits only after landing
its rows offline, seconds later. The events counted are the backlog less
``MAX_BATCH`` of ``strata.streamer.streams``, the most the first batch can hold:
the rate is a lower bound, by at most ``MAX_BATCH / backlog``. The streamer's
CPU time over the same span is read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import redis.asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.bus.stats import Distribution, rate
from bench.features.data import ENTITY, SEED
from bench.features.streamer import apply
from strata.core.topics import dead_letter_topic
from strata.streamer.streams import MAX_BATCH
from strata.transforms.definition import FeatureView
from strata.transforms.online import key_prefix

PARTITIONS = 3
BOUND = 120.0
"""Longest wait for the stream to deliver: a guard against hanging."""
FIRST_DRIVER = 1_000_000
"""Drivers of the freshness stream start here, apart from the served ones."""
LAST_DRIVER = 2_000_000
"""Drivers of the backlog's last events, one per partition."""


@dataclass(frozen=True)
class FreshnessResult:
    target_rate: float
    produced_rate: float
    """Events per second actually sent during the steady stream."""
    samples: int
    latency: Distribution
    """Event produced → readable, after warm-up."""
    lost: int
    """Events whose write was not seen within the bound."""


@dataclass(frozen=True)
class ThroughputResult:
    backlog: int
    timed_events: int
    seconds: float
    rate: float
    """Events per second one streamer consumed, wrote and checkpointed."""
    cpu_seconds: float
    """The streamer's CPU time over the timed span."""


def event(driver: int, when: datetime, rng: random.Random) -> bytes:
    """One raw event of the ``drivers`` view, as JSON."""
    document = {
        ENTITY: driver,
        "event_time": when.isoformat(),
        "trips": rng.randrange(500),
        "rating": round(rng.uniform(1.0, 5.0), 3),
        "spend": round(rng.uniform(0.0, 250.0), 2),
    }
    return json.dumps(document).encode()


async def create_topic(admin: AIOKafkaAdminClient, name: str) -> list[str]:
    """The raw topic and its dead-letter topic; their names, to delete after."""
    names = [name, dead_letter_topic(name)]
    await admin.create_topics(
        [NewTopic(n, PARTITIONS if n == name else 1, replication_factor=1) for n in names]
    )
    return names


@contextlib.asynccontextmanager
async def keyspace_events(client: redis.asyncio.Redis) -> AsyncIterator[None]:
    """Keyspace notifications for hash commands on, for the block; the old setting after."""
    reply: dict[Any, Any] = await client.config_get("notify-keyspace-events")
    old = next(iter(reply.values()), b"")
    old = old.decode() if isinstance(old, bytes) else str(old)
    wanted = "".join(dict.fromkeys(old + "Kh"))
    await client.config_set("notify-keyspace-events", wanted)
    try:
        yield
    finally:
        await client.config_set("notify-keyspace-events", old)


class Writes:
    """When each driver's hash of a view was first written, from keyspace notifications."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        view: FeatureView,
        db: int,
        drivers: Collection[int] | None = None,
    ) -> None:
        """Every driver of ``view``, or only ``drivers`` (then no other write reaches us)."""
        self._pubsub = client.pubsub()
        self._prefix = f"__keyspace@{db}__:{key_prefix(view)}"
        self._drivers = drivers
        self.seen: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        if self._drivers is None:
            await self._pubsub.psubscribe(f"{self._prefix}*")
        else:
            await self._pubsub.subscribe(*(f"{self._prefix}[{d}]" for d in self._drivers))
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            now = time.perf_counter()
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            driver = int(channel.rsplit("[", 1)[1].rstrip("]"))
            self.seen.setdefault(driver, now)
            self._changed.set()

    async def first(self, bound: float) -> float:
        """When the first write was seen; TimeoutError after ``bound`` seconds without one."""
        async with asyncio.timeout(bound):
            while not self.seen:
                self._changed.clear()
                await self._changed.wait()
        return min(self.seen.values())

    async def wait_for(self, drivers: set[int], bound: float) -> None:
        """Until every driver in ``drivers`` was seen, or ``bound`` seconds passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                while not drivers.issubset(self.seen):
                    self._changed.clear()
                    await self._changed.wait()

    async def close(self) -> None:
        """Stop listening (again: a no-op)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]


async def freshness(
    producer: AIOKafkaProducer,
    writes: Writes,
    topic: str,
    events: int,
    per_second: float,
    warmup: int,
) -> FreshnessResult:
    """A steady stream of ``events`` at ``per_second``; latency of each to its Redis write."""
    rng = random.Random(SEED)
    probe = FIRST_DRIVER - 1
    await producer.send_and_wait(topic, event(probe, datetime.now(UTC), rng), key=b"probe")
    await writes.wait_for({probe}, BOUND)
    if probe not in writes.seen:
        raise TimeoutError(f"the streamer wrote no value within {BOUND:g} s of the first event")
    sent: dict[int, float] = {}
    started = time.perf_counter()
    for i in range(events):
        pause = started + i / per_second - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        driver = FIRST_DRIVER + i
        value = event(driver, datetime.now(UTC), rng)
        sent[driver] = time.perf_counter()
        await producer.send(topic, value, key=str(driver).encode())
    produced = rate(events, time.perf_counter() - started)
    await producer.flush()
    await writes.wait_for(set(sent), BOUND)
    measured = [d for d in sorted(sent)[warmup:] if d in writes.seen]
    return FreshnessResult(
        target_rate=per_second,
        produced_rate=produced,
        samples=len(measured),
        latency=Distribution.of([writes.seen[d] - sent[d] for d in measured]),
        lost=sum(1 for d in sent if d not in writes.seen),
    )


async def fill(producer: AIOKafkaProducer, topic: str, events: int, drivers: int) -> list[int]:
    """``events`` raw events over ``drivers`` drivers, event times rising, all acknowledged.

    Then one last event per partition for a driver of its own (``LAST_DRIVER`` on):
    Kafka keeps a partition's order, so once those drivers are written, every
    event before them was. Returns those drivers.
    """
    rng = random.Random(SEED + 1)
    start = datetime.now(UTC) - timedelta(hours=1)
    step = timedelta(hours=1) / events
    for i in range(events):
        driver = rng.randrange(drivers)
        await producer.send(topic, event(driver, start + i * step, rng), key=str(driver).encode())
    last = [LAST_DRIVER + p for p in range(PARTITIONS)]
    for partition, driver in enumerate(last):
        value = event(driver, start + timedelta(hours=1), rng)
        await producer.send(topic, value, key=str(driver).encode(), partition=partition)
    await producer.flush()
    return last


async def throughput(
    channel: grpc.aio.Channel,
    first: Writes,
    last: Writes,
    view: FeatureView,
    events: int,
    streamer_pid: int,
) -> ThroughputResult:
    """Apply ``view`` over its filled topic and time the streamer working through it.

    ``first`` listens to every driver of ``view`` and is closed at the first write;
    ``last`` listens to the drivers ``fill`` put at the end of each partition.
    """
    await apply(channel, view)
    began = await first.first(BOUND)
    await first.close()
    cpu_then = _cpu_seconds(streamer_pid)
    ends = [LAST_DRIVER + p for p in range(PARTITIONS)]
    await last.wait_for(set(ends), BOUND)
    missing = [d for d in ends if d not in last.seen]
    if missing:
        raise TimeoutError(f"the stream did not reach the end of its backlog within {BOUND:g} s")
    ended = max(last.seen[d] for d in ends)
    cpu = _cpu_seconds(streamer_pid) - cpu_then
    timed = events + PARTITIONS - MAX_BATCH
    if timed <= 0:
        raise ValueError(f"a backlog of {events:,} events fits in one batch of {MAX_BATCH:,}")
    return ThroughputResult(
        backlog=events + PARTITIONS,
        timed_events=timed,
        seconds=ended - began,
        rate=rate(timed, ended - began),
        cpu_seconds=cpu,
    )


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
