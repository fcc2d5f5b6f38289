"""The prediction log's buffer: a request never waits, what Kafka refuses is kept and sent
again, what overflows is counted, a resent record keeps its event id, predictions linger
for company before they are sent, and at shutdown the buffer is flushed within the grace
(without lingering), what Kafka did not take counted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from strata.api.gateway.v1.gateway_pb2 import PredictionLogged
from strata.core.envelope import open_envelope
from strata.core.metrics import Metrics
from strata.core.runtime import ServiceContext
from strata.gateway.metrics import GatewayMetrics
from strata.gateway.prediction_log import PredictionLog

SERVED = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
"""When the test's predictions were served."""


PARTITIONS = [0, 1, 2]
TOO_LARGE = 1_048_588
"""Bytes of a batch the fake broker refuses, as Kafka does by default (message.max.bytes)."""


class Batch:
    """A record batch as aiokafka's ``BatchBuilder`` takes records: full after three."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None, headers: Any) -> Any:
        if len(self.records) == 3:
            return None
        self.records.append((key, value))
        return object()


class Producer:
    """Takes batches while ``up``; a batch sent while down fails, as a dead broker's would."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.partition_of: dict[bytes, set[int]] = {}

    async def partitions_for(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if sum(len(value) for _, value in batch.records) > TOO_LARGE:
            done.set_exception(MessageSizeTooLargeError())
        elif self.up.is_set():
            for key, value in batch.records:
                self.sent.append((topic, value, key))
                self.partition_of.setdefault(key, set()).add(partition)
            done.set_result(None)
        else:
            done.set_exception(ConnectionError("broker down"))
        return done


class FakeBus:
    def __init__(self) -> None:
        self.producer = Producer()
        self.name = "gateway/test"


def _context(bus: FakeBus, grace: float = 1.0) -> ServiceContext:
    settings = SimpleNamespace(service=SimpleNamespace(shutdown_grace=grace))
    return ServiceContext("gateway", cast(Any, settings), Metrics(), _bus=cast(Any, bus))


def _records(count: int, start: int = 0) -> list[PredictionLogged]:
    return [
        PredictionLogged(prediction_id=f"p{i}", entity_key=f"courier_id={i}", model_name="eta")
        for i in range(start, start + count)
    ]


async def _until(check: Any) -> None:
    async with asyncio.timeout(10):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


async def test_records_kafka_refused_are_kept_and_sent_when_it_returns() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    log = PredictionLog(capacity=100, batch=4, metrics=metrics)
    writer = asyncio.create_task(log.run(_context(bus)))
    try:
        log.record(_records(10), SERVED)  # returns at once, Kafka down or not
        await _until(lambda: metrics.log_failures._value.get() >= 1)
        bus.producer.up.set()
        await _until(lambda: len(bus.producer.sent) == 10)
    finally:
        writer.cancel()
    keys = {open_envelope(value).event_id: key for _, value, key in bus.producer.sent}
    assert sorted(keys) == sorted(f"p{i}" for i in range(10)), "each once, its id kept"
    assert keys["p3"] == b"courier_id=3"
    assert {topic for topic, _, _ in bus.producer.sent} == {"strata.predictions"}
    # A key's records go where the producer's own partitioner sends that key.
    partitioner = DefaultPartitioner()
    assert bus.producer.partition_of == {
        key: {partitioner(key, PARTITIONS, PARTITIONS)} for key in keys.values()
    }
    assert len({p for ps in bus.producer.partition_of.values() for p in ps}) > 1
    assert metrics.logged._value.get() == 10
    assert metrics.dropped._value.get() == 0


async def test_a_record_too_large_for_kafka_is_dropped_and_counted_the_rest_sent() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    bus.producer.up.set()
    log = PredictionLog(capacity=100, batch=10, metrics=metrics)
    writer = asyncio.create_task(log.run(_context(bus)))
    try:
        records = _records(10)
        records[4].request_id = "x" * TOO_LARGE  # sent, Kafka would refuse its batch for good
        log.record(records, SERVED)
        await _until(lambda: metrics.logged._value.get() == 9)
        log.record(_records(1, start=10), SERVED)  # the log keeps flowing after it
        await _until(lambda: metrics.logged._value.get() == 10)
    finally:
        writer.cancel()
    sent = sorted(open_envelope(value).event_id for _, value, _ in bus.producer.sent)
    assert sent == sorted(f"p{i}" for i in range(11) if i != 4)
    assert metrics.log_failures._value.get() == 0, "never sent, so never refused"
    assert metrics.dropped._value.get() == 1
    assert metrics.logged._value.get() == 10
    assert metrics.buffered._value.get() == 0


async def test_what_overflows_the_buffer_is_dropped_and_counted() -> None:
    metrics = GatewayMetrics()
    log = PredictionLog(capacity=5, batch=4, metrics=metrics)
    log.record(_records(3), SERVED)
    log.record(_records(4, start=3), SERVED)
    assert metrics.dropped._value.get() == 2
    assert metrics.buffered._value.get() == 5


async def test_a_prediction_without_entity_is_keyed_by_its_id() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    bus.producer.up.set()
    log = PredictionLog(capacity=10, batch=10, metrics=metrics)
    writer = asyncio.create_task(log.run(_context(bus)))
    try:
        log.record([PredictionLogged(prediction_id="solo", model_name="eta")], SERVED)
        await _until(lambda: len(bus.producer.sent) == 1)
    finally:
        writer.cancel()
    assert bus.producer.sent[0][2] == b"solo"


async def test_at_shutdown_the_buffer_is_flushed_before_the_task_ends() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    log = PredictionLog(capacity=100, batch=4, metrics=metrics)
    writer = asyncio.create_task(log.run(_context(bus, grace=10.0)))
    log.record(_records(10), SERVED)
    await _until(lambda: metrics.log_failures._value.get() >= 1)  # Kafka down: kept
    writer.cancel()
    await asyncio.sleep(0)  # the flush has begun: Kafka returns within the grace
    bus.producer.up.set()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert sorted(open_envelope(v).event_id for _, v, _ in bus.producer.sent) == sorted(
        f"p{i}" for i in range(10)
    )
    assert metrics.dropped._value.get() == 0
    log.record(_records(1, start=10), SERVED)
    assert metrics.dropped._value.get() == 1, "nothing sends after the flush: counted"


async def test_what_kafka_does_not_take_within_the_grace_is_counted_as_dropped() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    log = PredictionLog(capacity=100, batch=4, metrics=metrics)
    writer = asyncio.create_task(log.run(_context(bus, grace=0.3)))
    log.record(_records(10), SERVED)
    await _until(lambda: metrics.log_failures._value.get() >= 1)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert bus.producer.sent == []
    assert metrics.dropped._value.get() == 10
    assert metrics.buffered._value.get() == 0


async def test_predictions_wait_the_linger_for_company_but_not_at_shutdown() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    bus.producer.up.set()
    log = PredictionLog(capacity=100, batch=10, metrics=metrics, linger=3600.0)
    writer = asyncio.create_task(log.run(_context(bus)))
    log.record(_records(1), SERVED)
    await asyncio.sleep(0.05)  # the writer took the first record's wake-up: it lingers
    log.record(_records(3, start=1), SERVED)
    await asyncio.sleep(0.05)
    assert bus.producer.sent == [], "a lone prediction is not sent before the linger"
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert sorted(open_envelope(v).event_id for _, v, _ in bus.producer.sent) == [
        "p0",
        "p1",
        "p2",
        "p3",
    ]
    assert metrics.dropped._value.get() == 0


async def test_a_record_is_sealed_with_when_it_was_served_not_when_it_was_sent() -> None:
    bus, metrics = FakeBus(), GatewayMetrics()
    bus.producer.up.set()
    log = PredictionLog(capacity=100, batch=10, metrics=metrics, linger=3600.0)
    writer = asyncio.create_task(log.run(_context(bus)))
    earlier = datetime(2026, 1, 5, 9, 29, 59, 250_000, tzinfo=UTC)
    log.record(_records(1), earlier)
    log.record(_records(1, start=1), SERVED)
    await asyncio.sleep(0.05)  # the writer lingers
    writer.cancel()  # the shutdown flush sends them, long after they were served
    with pytest.raises(asyncio.CancelledError):
        await writer
    envelopes = [open_envelope(v).envelope for _, v, _ in bus.producer.sent]
    occurred = {e.event_id: e.occurred_at.ToDatetime(tzinfo=UTC) for e in envelopes}
    assert occurred == {"p0": earlier, "p1": SERVED}


def test_a_log_needs_room() -> None:
    with pytest.raises(ValueError, match="positive"):
        PredictionLog(capacity=0, batch=1, metrics=GatewayMetrics())
    with pytest.raises(ValueError, match="linger"):
        PredictionLog(capacity=1, batch=1, metrics=GatewayMetrics(), linger=-1.0)
