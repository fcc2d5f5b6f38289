"""A real ``python -m strata.streamer`` following a raw topic into the online store.

What a team relies on: once a view on a topic is applied, events produced to the
topic (out of order within the allowed lateness, duplicated, behind it) become
online features equal to what the batch path computes over the same events at
the time of the read (windows slide: an event older than the window no longer
counts, however long ago the last event was); a raw event that does not fit the view's columns
is dead-lettered with the reason and the stream goes on; a streamer killed with
SIGKILL mid-stream resumes from its checkpoint, losing no event and counting none
twice. The streamer counts what it consumed, dead-lettered, dropped (late,
duplicate) and landed per view on ``/metrics``. Each test runs its own streamer,
so no other process follows its view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_processes import running
from topics import topic_with_dead_letters

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
START = timedelta(minutes=75)
"""How long before the test the event log starts: its first event has left the 1 h window."""


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A raw topic of this test's own, with its dead-letter topic."""
    async with topic_with_dead_letters(f"test.raw.couriers.{uuid.uuid4().hex[:12]}", 2) as name:
        yield name


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
    """A log with late events (dropped), an out-of-order one within the lateness, a replay of
    a late event (late again) and of a latest one (a duplicate)."""
    at = [start + timedelta(minutes=m) for m in (0, 20, 50, 45, 5, 70, 30)]
    minutes = [12.0, 41.5, None, 18.0, 22.0, 9.5, 33.0]
    couriers = [1, 1, 1, 1, 1, 2, 2]
    events = [
        {"courier_id": c, "event_time": t.isoformat(), "minutes": m}
        for c, t, m in zip(couriers, at, minutes, strict=True)
    ]
    return [*events, events[1], events[5]]


async def test_events_become_the_online_values_the_batch_path_computes(
    tmp_path: Path, topic: str
) -> None:
    view = courier_view(topic)
    events = _events(datetime.now(UTC).replace(microsecond=0) - START)
    broken = [b'{"courier_id": 1, "event_time": "2026-06-01T08:00:00Z", "minutes": "ten"}', b"{"]
    async with (
        running("streamer", tmp_path, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
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

        online, expected = await _online_when_equal(client, view, events, [1, 2])
        assert online == expected
        assert [row[0][0] for row in expected] == [3, 1], "deliveries in the hour before the read"
        # 9 events and 2 broken ones read; 3 behind the allowed lateness, 1 replayed.
        wanted: dict[str, float] = {
            "consumed": 11,
            "dead_lettered": 2,
            "late": 3,
            "duplicate": 1,
            "invalid": 0,
        }
        counted = await _counts_when(streamer.metrics_port, view.name, wanted)
        assert {name: counted.get(name) for name in wanted} == wanted
        assert counted["partitions_landed"] >= 1

    letters = await _dead_letters(topic, count=2)
    assert [letter.value for letter in letters] == broken
    assert "column 'minutes' expected a number" in letters[0].reason
    assert view.name in letters[0].reason
    assert "not a JSON document" in letters[1].reason


async def test_a_streamer_killed_mid_stream_resumes_without_losing_or_double_counting(
    tmp_path: Path, topic: str
) -> None:
    view = courier_view(topic)
    start = datetime.now(UTC).replace(microsecond=0) - START
    events = _events(start)
    more = [
        {"courier_id": 1, "event_time": (start + timedelta(minutes=m)).isoformat(), "minutes": 5.0}
        for m in (55, 58, 52)
    ]
    async with (
        running("streamer", tmp_path, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        client = FeatureServiceStub(channel)
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        await _produce(topic, events)
        online, expected = await _online_when_equal(client, view, events, [1, 2])
        assert online == expected
        await _produce(topic, more[:1])
        streamer.process.kill()
        await streamer.process.wait()
    await _produce(topic, more[1:])
    async with (
        running("streamer", tmp_path, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        client = FeatureServiceStub(channel)
        online, expected = await _online_when_equal(client, view, [*events, *more], [1])
        assert expected[0][0][0] == 6, "the log counts 6 deliveries in the hour before the read"
        assert online == expected


async def _counts_when(port: int, view: str, wanted: dict[str, float]) -> dict[str, float]:
    """The streamer's counts for ``view`` on ``/metrics`` once they include ``wanted`` and a
    landed partition (or the last ones after the bound): its bookkeeping may trail the reads."""
    counted: dict[str, float] = {}
    url = f"http://127.0.0.1:{port}/metrics"
    with contextlib.suppress(TimeoutError):
        async with aiohttp.ClientSession() as session, asyncio.timeout(BOUND):
            while any(counted.get(k) != v for k, v in wanted.items()) or not counted.get(
                "partitions_landed"
            ):
                await asyncio.sleep(0.2)
                async with session.get(url) as reply:
                    text = await reply.text()
                counted = _view_counts(text, view)
    return counted


def _view_counts(text: str, view: str) -> dict[str, float]:
    """``strata_streamer_*`` counters of ``view``, by what they count (the reason for drops)."""
    counted: dict[str, float] = {}
    prefix = "strata_streamer_"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix) or not sample.name.endswith("_total"):
                continue
            if sample.labels.get("view") != view:
                continue
            what = sample.labels.get("reason") or family.name.removeprefix(prefix)
            counted[what.removeprefix("events_")] = sample.value
    return counted


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
    events: list[dict[str, Any]],
    couriers: list[int],
) -> tuple[list[list[tuple[Any, ...]]], list[list[tuple[Any, ...]]]]:
    """The online answer and the batch answer at the time of the read, once they are equal
    (or the last ones after the bound).

    The server reads at its own clock, some time between ``before`` and ``after``;
    an answer counts only when the batch path gives the same at both ends.
    """
    request = pb.GetOnlineFeaturesRequest(
        features=[f"{view.name}:{f.name}" for f in view.resolved_features],
        entities=[pb.EntityRow(keys={"courier_id": pb.Value(int64_value=c)}) for c in couriers],
    )
    answer: list[list[tuple[Any, ...]]] = []
    expected: list[list[tuple[Any, ...]]] = [[("no answer yet",)]]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BOUND):
            while answer != expected:
                await asyncio.sleep(0.2)
                before = datetime.now(UTC)
                reply = await client.GetOnlineFeatures(request, metadata=DEV)
                after = datetime.now(UTC)
                answer = [
                    [
                        (_scalar(v.value), v.status, v.event_time.ToDatetime(tzinfo=UTC))
                        for v in row.values
                    ]
                    for row in reply.rows
                ]
                expected = _batch_answer(view, events, couriers, after)
                if expected != _batch_answer(view, events, couriers, before):
                    expected = [[("a window edge passed during the read",)]]
    return answer, expected


def _batch_answer(
    view: FeatureView, events: list[dict[str, Any]], couriers: list[int], at: datetime
) -> list[list[tuple[Any, ...]]]:
    """What the batch path says each courier's features are at ``at``."""
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
    spine = pa.table(
        {
            "courier_id": pa.array(couriers, pa.int64()),
            "at": pa.array([at] * len(couriers), ColumnType.TIMESTAMP.arrow),
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
