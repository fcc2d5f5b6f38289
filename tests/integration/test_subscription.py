"""What a consumer group member promises when things go wrong, on the real Kafka.

- A dependency outage (here: the handler's Postgres refuses connections) pauses the
  partition for as long as it lasts: the event is handled once the dependency is
  back, never dead-lettered, and the events behind it keep their order.
- A dead letter that cannot be written leaves its record unsettled: nothing is
  committed past it, and once the dead-letter topic takes it (even in another
  process of the group) the record is dead-lettered and the rest handled.
- A handler in flight when a second member joins finishes and is committed before
  its partition moves: every event is handled, none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from google.protobuf.wrappers_pb2 import StringValue
from topics import topic_with_dead_letters

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core import kafka
from strata.core.bus import Bus
from strata.core.settings import BusSettings, KafkaSettings, PostgresSettings, load
from strata.core.topics import dead_letter_topic

pytestmark = pytest.mark.integration

WAIT = 60.0
"""Upper bound on any wait: a guard against hanging, not a timing check."""

SETTINGS = load(KafkaSettings)
PROBES = 200
"""Events published at most until one lands on the second member (half do, once it is in)."""
UNREACHABLE_POSTGRES = "postgresql://strata:strata@127.0.0.1:1/strata"
"""Where the handler looks for Postgres during the outage: nothing listens there."""


@contextlib.asynccontextmanager
async def _topic(partitions: int, dlq_max_bytes: int | None = None) -> AsyncIterator[str]:
    """A fresh topic and its dead-letter topic (records up to ``dlq_max_bytes``)."""
    configs = {} if dlq_max_bytes is None else {"max.message.bytes": str(dlq_max_bytes)}
    name = f"test.sub.{uuid.uuid4().hex[:12]}"
    async with topic_with_dead_letters(name, partitions, configs) as topic:
        yield topic


def _bus(name: str, **settings: float) -> Bus:
    """A bus that gives up on an error after 2 tries and waits at most 0.2 s between tries."""
    quick = BusSettings(
        producer=name, retry_attempts=2, retry_backoff_initial=0.01, retry_backoff_max=0.2
    )
    return Bus(name, kafka=SETTINGS, settings=quick.model_copy(update=settings))


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 - the conditions are plain state
            await asyncio.sleep(0.02)
    assert condition(), what


def _paused(bus: Bus, topic: str, group: str) -> float | None:
    labels = {"topic": topic, "group": group}
    return bus.metrics.registry.get_sample_value("strata_consumer_paused", labels)


async def test_an_outage_is_waited_out_in_order_and_never_dead_lettered() -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    postgres = load(PostgresSettings).dsn
    dsn = UNREACHABLE_POSTGRES
    tries: dict[str, int] = {}
    handled: list[str] = []

    async def on_text(payload: StringValue, envelope: Envelope) -> None:
        """Needs Postgres for every event, as a service's handler does."""
        tries[payload.value] = tries.get(payload.value, 0) + 1
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            await connection.execute("SELECT 1")
        finally:
            await connection.close()
        handled.append(payload.value)

    async with _topic(partitions=1) as topic:
        bus = _bus("outage")
        bus.consumer(topic, group=group).on(StringValue)(on_text)
        async with bus:
            for value in ("1", "2", "3"):
                await bus.publish(StringValue(value=value), topic=topic, key="run-1")
            # Far more tries than retry_attempts, and still nothing given up on.
            await _until(lambda: tries.get("1", 0) >= 6, "the first event is retried")
            assert _paused(bus, topic, group) == 1
            assert handled == []
            assert await _end_offset(dead_letter_topic(topic)) == 0

            dsn = postgres  # Postgres is back
            await _until(lambda: len(handled) == 3, "every event is handled")
            assert _paused(bus, topic, group) == 0

        assert handled == ["1", "2", "3"]
        assert await _end_offset(dead_letter_topic(topic)) == 0
        assert await _committed(group, topic) == 3


async def test_a_failed_dead_letter_write_is_read_again_and_nothing_is_lost() -> None:
    """The dead-letter topic refuses records over 1 KiB until an operator raises it."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    garbage = b"\xff" * 4096  # no envelope; its dead letter is over 1 KiB
    handled: list[str] = []

    def member(name: str, topic: str) -> Bus:
        bus = _bus(name)

        @bus.consumer(topic, group=group).on(StringValue)
        async def on_text(payload: StringValue, envelope: Envelope) -> None:
            handled.append(payload.value)

        return bus

    async with _topic(partitions=1, dlq_max_bytes=1024) as topic:
        first = member("first", topic)
        async with first:
            await first.producer.send_and_wait(topic, garbage, key=b"run-1")
            await first.publish(StringValue(value="after"), topic=topic, key="run-1")
            await _until(lambda: _paused(first, topic, group) == 1, "the partition pauses")
            assert handled == []
        assert await _committed(group, topic) <= 0  # nothing past the unsettled record

        await _raise_max_bytes(dead_letter_topic(topic), 1_048_576)
        second = member("second", topic)  # another process of the group takes over
        async with second:
            await _until(lambda: handled == ["after"], "the next event is handled")
        [letter] = await _read_dead_letters(dead_letter_topic(topic), count=1)
        assert (letter.offset, letter.cause, letter.value) == (
            0,
            DeadLetter.CAUSE_MALFORMED,
            garbage,
        )
        assert await _committed(group, topic) == 2


async def test_a_handler_in_flight_during_a_rebalance_finishes_and_is_handed_on() -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[str]] = {}
    in_flight, release = asyncio.Event(), asyncio.Event()

    def member(name: str, topic: str) -> Bus:
        bus = _bus(name, commit_interval_ms=3_600_000, commit_every=1_000_000)

        @bus.consumer(topic, group=group).on(StringValue)
        async def on_text(payload: StringValue, envelope: Envelope) -> None:
            if payload.value == "slow":
                in_flight.set()
                await release.wait()
            seen.setdefault(payload.value, []).append(name)

        return bus

    async with _topic(partitions=2) as topic:
        first, second = member("first", topic), member("second", topic)
        async with first:
            keys = [f"k{n}" for n in range(8)]  # both partitions
            await first.publish(StringValue(value="slow"), topic=topic, key="k0")
            for n, key in enumerate(keys):
                await first.publish(StringValue(value=f"behind-{n}"), topic=topic, key=key)
            await asyncio.wait_for(in_flight.wait(), WAIT)
            joining = asyncio.create_task(second.start())  # returns once the group is joined
            try:
                await _until(lambda: _revoking(first), "the group rebalances")
                release.set()
                await asyncio.wait_for(joining, WAIT)
                n = 0
                while await _probe(first, topic, seen, n) != "second":
                    n += 1
                    assert n < PROBES, "the second member never got a partition"
            finally:
                await second.stop()
            ends = await _end_offsets(topic, partitions=2)

    assert all(len(members) == 1 for members in seen.values()), seen
    assert len(seen) == 1 + len(keys) + n + 1
    assert await _committed_all(group, topic, partitions=2) == ends


def _revoking(bus: Bus) -> bool:
    """Whether the bus's first member is giving partitions up (waiting for its handler)."""
    [subscription] = bus._subscriptions
    return subscription._revoking


async def _probe(bus: Bus, topic: str, seen: dict[str, list[str]], n: int) -> str:
    """Publish one event and return the member that handled it."""
    value = f"probe-{n}"
    await bus.publish(StringValue(value=value), topic=topic, key=f"p{n}")
    await _until(lambda: value in seen, f"{value} is handled")
    return seen[value][0]


async def _raise_max_bytes(topic: str, limit: int) -> None:
    admin = kafka.admin(SETTINGS)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)}
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


async def _read_dead_letters(topic: str, count: int) -> list[DeadLetter]:
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
    [offset] = await _committed_all(group, topic, partitions=1)
    return offset


async def _committed_all(group: str, topic: str, partitions: int) -> list[int]:
    admin = kafka.admin(SETTINGS)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    found = [offsets.get(TopicPartition(topic, p)) for p in range(partitions)]
    return [-1 if o is None else int(o.offset) for o in found]


async def _end_offsets(topic: str, partitions: int) -> list[int]:
    reader = AIOKafkaConsumer(bootstrap_servers=SETTINGS.bootstrap)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await reader.end_offsets(tps)
        return [int(ends[tp]) for tp in tps]
    finally:
        await reader.stop()


async def _end_offset(topic: str) -> int:
    [end] = await _end_offsets(topic, partitions=1)
    return end
