"""A real ``python -m strata.streamer`` following a raw topic into the online store.

What a team relies on: once a view on a topic is applied, events produced to the
topic (out of order within the allowed lateness, duplicated, behind it) become
online features equal to what the batch path computes over the same events at
each entity's latest event time; a raw event that does not fit the view's columns
is dead-lettered with the reason and the stream goes on; a streamer killed with
SIGKILL mid-stream resumes from its checkpoint, losing no event and counting none
twice. Each test runs its own streamer, so no other process follows its view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from aiokafka.admin import NewTopic
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core import kafka
from strata.core.settings import KafkaSettings, load
from strata.core.topics import dead_letter_topic
from strata.transforms.batch import feature_values
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
    Transform,
)
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for the process or the stream: a guard against hanging, not a timing check."""
TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
DEV = (("authorization", "Bearer dev-token"),)
KAFKA = load(KafkaSettings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _streamer(log: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A streamer process and its address, once it is SERVING; stopped with SIGTERM after."""
    port = _free_port()
    env = {
        **os.environ,
        "STRATA_SERVICE_STREAMER_PORT": str(port),
        "STRATA_SERVICE_STREAMER_METRICS_PORT": str(_free_port()),
        "STRATA_AUTH_TOKENS": json.dumps(TOKENS),
    }
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.streamer", env=env, stderr=sink
        )
    address = f"127.0.0.1:{port}"
    try:
        async with asyncio.timeout(BOUND):
            while not await _serving(address):
                assert process.returncode is None, f"the streamer exited, see {log}"
                await asyncio.sleep(0.2)
        yield address, process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A raw topic of this test's own, with its dead-letter topic."""
    name = f"test.raw.couriers.{uuid.uuid4().hex[:12]}"
    admin = kafka.admin(KAFKA)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, 2, replication_factor=1),
                NewTopic(dead_letter_topic(name), 1, replication_factor=1),
            ]
        )
        yield name
        await admin.delete_topics([name, dead_letter_topic(name)])
    finally:
        await admin.close()


def courier_view(topic: str) -> FeatureView:
    return FeatureView(
        name=f"couriers_{uuid.uuid4().hex[:12]}",
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            topic,
            (
                Column("courier_id", ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("minutes", ColumnType.DOUBLE),
            ),
        ),
        transforms=(Transform("late", "minutes > 30"),),
        features=(
            Feature("deliveries_1h", aggregation=Aggregation(AggregationFunction.COUNT, "1h")),
            Feature(
                "minutes_mean_1h",
                column="minutes",
                aggregation=Aggregation(AggregationFunction.MEAN, "1h"),
            ),
            Feature("late", default=False),
            Feature("minutes", default=-1.0),
        ),
        ttl="3h",
        allowed_lateness="10m",
    )


def _events(start: datetime) -> list[dict[str, Any]]:
    """A log with a late event (dropped), an out-of-order one within the lateness, a duplicate."""
    at = [start + timedelta(minutes=m) for m in (0, 20, 50, 45, 5, 70, 30)]
    minutes = [12.0, 41.5, None, 18.0, 22.0, 9.5, 33.0]
    couriers = [1, 1, 1, 1, 1, 2, 2]
    events = [
        {"courier_id": c, "event_time": t.isoformat(), "minutes": m}
        for c, t, m in zip(couriers, at, minutes, strict=True)
    ]
    return [*events, events[1]]


async def test_events_become_the_online_values_the_batch_path_computes(
    tmp_path: Path, topic: str
) -> None:
    view = courier_view(topic)
    events = _events(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2))
    broken = [b'{"courier_id": 1, "event_time": "2026-06-01T08:00:00Z", "minutes": "ten"}', b"{"]
    async with (
        _streamer(tmp_path / "streamer.log") as (address, _),
        grpc.aio.insecure_channel(address) as channel,
    ):
        client = FeatureServiceStub(channel)
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        producer = kafka.producer(KAFKA)
        await producer.start()
        try:
            for event in events[:4]:
                await producer.send_and_wait(topic, json.dumps(event).encode(), key=b"1")
            for value in broken:
                await producer.send_and_wait(topic, value, key=b"1")
        finally:
            await producer.stop()
        await _produce(topic, events[4:])

        expected = _batch_answer(view, events, [1, 2])
        assert await _online_when_equal(client, view, [1, 2], expected) == expected

    letters = await _dead_letters(topic, count=2)
    assert [letter.value for letter in letters] == broken
    assert "column 'minutes' expected a number" in letters[0].reason
    assert view.name in letters[0].reason
    assert "not a JSON document" in letters[1].reason


async def test_a_streamer_killed_mid_stream_resumes_without_losing_or_double_counting(
    tmp_path: Path, topic: str
) -> None:
    view = courier_view(topic)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    events = _events(start)
    more = [
        {"courier_id": 1, "event_time": (start + timedelta(minutes=m)).isoformat(), "minutes": 5.0}
        for m in (55, 58, 52)
    ]
    log = tmp_path / "streamer.log"
    async with (
        _streamer(log) as (address, process),
        grpc.aio.insecure_channel(address) as channel,
    ):
        client = FeatureServiceStub(channel)
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        await _produce(topic, events)
        expected = _batch_answer(view, events, [1, 2])
        assert await _online_when_equal(client, view, [1, 2], expected) == expected
        await _produce(topic, more[:1])
        process.kill()
        await process.wait()
    await _produce(topic, more[1:])
    async with (
        _streamer(log) as (address, _),
        grpc.aio.insecure_channel(address) as channel,
    ):
        client = FeatureServiceStub(channel)
        expected = _batch_answer(view, [*events, *more], [1])
        assert expected[0][0][0] == 7, "the log counts 7 deliveries in the hour"
        assert await _online_when_equal(client, view, [1], expected) == expected


async def _produce(topic: str, events: list[dict[str, Any]]) -> None:
    producer = kafka.producer(KAFKA)
    await producer.start()
    try:
        for event in events:
            key = str(event["courier_id"]).encode()
            await producer.send_and_wait(topic, json.dumps(event).encode(), key=key)
    finally:
        await producer.stop()


async def _online_when_equal(
    client: FeatureServiceStub,
    view: FeatureView,
    couriers: list[int],
    expected: list[list[tuple[Any, ...]]],
) -> list[list[tuple[Any, ...]]]:
    """The online answer once it equals ``expected``, or the last one after the bound."""
    request = pb.GetOnlineFeaturesRequest(
        features=[f"{view.name}:{f.name}" for f in view.resolved_features],
        entities=[pb.EntityRow(keys={"courier_id": pb.Value(int64_value=c)}) for c in couriers],
    )
    answer: list[list[tuple[Any, ...]]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BOUND):
            while answer != expected:
                await asyncio.sleep(0.2)
                reply = await client.GetOnlineFeatures(request, metadata=DEV)
                answer = [
                    [
                        (_scalar(v.value), v.status, v.event_time.ToDatetime(tzinfo=UTC))
                        for v in row.values
                    ]
                    for row in reply.rows
                ]
    return answer


def _batch_answer(
    view: FeatureView, events: list[dict[str, Any]], couriers: list[int]
) -> list[list[tuple[Any, ...]]]:
    """What the batch path says each courier's features are at its latest accepted event."""
    rows = pa.table(
        {
            "courier_id": pa.array([e["courier_id"] for e in events], pa.int64()),
            "event_time": pa.array(
                [datetime.fromisoformat(e["event_time"]) for e in events],
                ColumnType.TIMESTAMP.arrow,
            ),
            "minutes": pa.array([e["minutes"] for e in events], pa.float64()),
        }
    )
    accepted = [e for e in events if e["courier_id"] in couriers]
    latest = {c: max(e["event_time"] for e in accepted if e["courier_id"] == c) for c in couriers}
    spine = pa.table(
        {
            "courier_id": pa.array(list(latest), pa.int64()),
            "at": pa.array(
                [datetime.fromisoformat(t) for t in latest.values()], ColumnType.TIMESTAMP.arrow
            ),
        }
    )
    batch = feature_values(view, rows, spine)
    names = [f.name for f in view.resolved_features]
    times = batch.event_times.to_pylist()
    assert batch.statuses.to_pylist() == ["present"] * len(couriers)
    return [
        [(batch.values.column(n)[i].as_py(), pb.FEATURE_STATUS_PRESENT, times[i]) for n in names]
        for i in range(len(couriers))
    ]


def _scalar(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


async def _dead_letters(topic: str, count: int) -> list[DeadLetter]:
    consumer = kafka.consumer(
        KAFKA, dead_letter_topic(topic), group_id=f"test-dlq-{uuid.uuid4().hex[:8]}"
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(BOUND):
            while len(letters) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    letters += [DeadLetter.FromString(r.value) for r in records]
    finally:
        await consumer.stop()
    return letters
