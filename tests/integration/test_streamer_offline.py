"""A real streamer landing a view's raw events in the offline store (Parquet on the stack's S3).

What a team relies on: the events produced to a view's topic (those that fit its
columns) end up as Parquet partitions in the blob store that any Arrow reader
opens, each announced on ``strata.data.arrived`` with its dataset (the topic),
partition, file and row count; and a streamer killed with SIGKILL mid-stream and
restarted lands every event exactly once, so the offline copy equals what was
produced.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LocalStack
from service_processes import running
from topics import topic_with_dead_letters

from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core import kafka
from strata.core.blobs import open_blob_store
from strata.core.envelope import open_envelope
from strata.core.settings import KafkaSettings, load
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
)
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for the stream: a guard against hanging, not a timing check."""
TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
DEV = (("authorization", "Bearer dev-token"),)
KAFKA = load(KafkaSettings)
ENV = {"STRATA_AUTH_TOKENS": json.dumps(TOKENS), "STRATA_BLOB_BACKEND": "s3"}


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A raw topic of this test's own, with its dead-letter topic."""
    async with topic_with_dead_letters(f"test.raw.offline.{uuid.uuid4().hex[:12]}", 2) as name:
        yield name


def courier_view(topic: str) -> FeatureView:
    return FeatureView(
        name=f"offline_{uuid.uuid4().hex[:12]}",
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
        features=(
            Feature("deliveries_1h", aggregation=Aggregation(AggregationFunction.COUNT, "1h")),
            Feature("minutes", default=-1.0),
        ),
    )


def events(start: datetime, count: int, first: int = 0) -> list[dict[str, Any]]:
    """``count`` events of three couriers, spread over two hours of event time."""
    return [
        {
            "courier_id": i % 3,
            "event_time": (start + timedelta(minutes=7 * i)).isoformat(),
            "minutes": float(i),
        }
        for i in range(first, first + count)
    ]


async def produce(topic: str, produced: list[dict[str, Any]]) -> None:
    producer = kafka.producer(KAFKA)
    await producer.start()
    try:
        for event in produced:
            key = str(event["courier_id"]).encode()
            await producer.send_and_wait(topic, json.dumps(event).encode(), key=key)
    finally:
        await producer.stop()


async def announced(dataset: str, rows: int) -> list[DataArrived]:
    """DataArrived of ``dataset`` (one per partition) until they count ``rows`` rows."""
    consumer = kafka.consumer(
        KAFKA, "strata.data.arrived", group_id=f"test-arrived-{uuid.uuid4().hex[:8]}"
    )
    await consumer.start()
    seen: dict[str, DataArrived] = {}
    try:
        async with asyncio.timeout(BOUND):
            while sum(a.row_count for a in seen.values()) < rows:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        event = open_envelope(record.value)
                        payload = event.payload
                        if isinstance(payload, DataArrived) and payload.dataset == dataset:
                            seen[event.event_id] = payload
    finally:
        await consumer.stop()
    return list(seen.values())


async def offline_rows(stack: LocalStack, partitions: list[DataArrived]) -> list[tuple[Any, ...]]:
    """Every row of the announced partitions' Parquet files, read with plain pyarrow."""
    rows: list[tuple[Any, ...]] = []
    async with open_blob_store(stack.blobs) as blobs:
        for partition in partitions:
            table = pq.read_table(io.BytesIO(await blobs.get(partition.uri)))
            assert table.num_rows == partition.row_count
            rows += [
                (r["courier_id"], r["event_time"].isoformat(), r["minutes"])
                for r in table.to_pylist()
            ]
    return sorted(rows)


def as_rows(produced: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (e["courier_id"], datetime.fromisoformat(e["event_time"]).isoformat(), e["minutes"])
        for e in produced
    )


async def test_produced_events_land_as_parquet_partitions_announced_by_data_arrived(
    tmp_path: Path, topic: str, local_stack: LocalStack
) -> None:
    view = courier_view(topic)
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    produced = events(start, 12)
    async with (
        running("streamer", tmp_path, **ENV) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        await FeatureServiceStub(channel).ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        await produce(topic, produced)
        await produce(topic, [{"courier_id": 1, "event_time": "yesterday", "minutes": 1.0}])
        partitions = await announced(topic, len(produced))

    assert sum(p.row_count for p in partitions) == len(produced), "the refused event is not landed"
    assert await offline_rows(local_stack, partitions) == as_rows(produced)
    hours = {p.partition.split("/")[0] for p in partitions}
    assert hours == {"hour=2026-06-01T08", "hour=2026-06-01T09"}
    for partition in partitions:
        assert partition.uri == f"offline/{topic}/{partition.partition}/part-0.parquet"
        assert partition.format == "parquet"
        assert partition.checksum.startswith("sha256:")
        assert partition.size_bytes > 0


async def test_a_streamer_killed_mid_stream_lands_every_event_once(
    tmp_path: Path, topic: str, local_stack: LocalStack
) -> None:
    view = courier_view(topic)
    start = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    first, second, third = events(start, 6), events(start, 5, first=6), events(start, 4, first=11)
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    async with (
        running("streamer", tmp_path / "first", **ENV) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        client = FeatureServiceStub(channel)
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        await produce(topic, first)
        await announced(topic, len(first))
        await produce(topic, second)
        # The second batch is consumed (it is online) but, killed now, most likely
        # not landed yet: the restarted stream must land it, once.
        await online_minutes(client, view, courier=1, minutes=second[-1]["minutes"])
        streamer.process.kill()
        await streamer.process.wait()
    await produce(topic, third)
    produced = [*first, *second, *third]
    at = datetime.fromisoformat(produced[-1]["event_time"])
    labels = pa.table({"courier_id": [0, 1, 2], "event_time": [at] * 3})
    async with (
        running("streamer", tmp_path / "second", **ENV) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        partitions = await announced(topic, len(produced))
        training_set = await materialized(
            FeatureServiceStub(channel),
            pb.MaterializeTrainingSetRequest(
                labels_uri=await upload(local_stack, labels),
                features=[f"{view.name}:deliveries_1h"],
            ),
        )

    assert await offline_rows(local_stack, partitions) == as_rows(produced)
    counts = [
        sum(
            1
            for e in produced
            if e["courier_id"] == courier
            and at - timedelta(hours=1) < datetime.fromisoformat(e["event_time"]) <= at
        )
        for courier in (0, 1, 2)
    ]
    table, _ = await result_of(local_stack, training_set)
    assert table.column(f"{view.name}:deliveries_1h").to_pylist() == counts


async def online_minutes(
    client: FeatureServiceStub, view: FeatureView, courier: int, minutes: float
) -> None:
    """Wait until the courier's latest online ``minutes`` is ``minutes``."""
    request = pb.GetOnlineFeaturesRequest(
        features=[f"{view.name}:minutes"],
        entities=[pb.EntityRow(keys={"courier_id": pb.Value(int64_value=courier)})],
    )
    async with asyncio.timeout(BOUND):
        while True:
            reply = await client.GetOnlineFeatures(request, metadata=DEV)
            if reply.rows[0].values[0].value.double_value == minutes:
                return
            await asyncio.sleep(0.1)


async def upload(stack: LocalStack, labels: pa.Table) -> str:
    """Store a label file in the stack's blob store; its key."""
    key = f"test/labels/{uuid.uuid4().hex}.parquet"
    sink = io.BytesIO()
    pq.write_table(labels, sink)
    async with open_blob_store(stack.blobs) as blobs:
        await blobs.put(key, sink.getvalue())
    return key


async def materialized(
    client: FeatureServiceStub, request: pb.MaterializeTrainingSetRequest
) -> pb.TrainingSet:
    """Start a training set and poll it until it is SUCCEEDED or FAILED."""
    started = await client.MaterializeTrainingSet(request, metadata=DEV)
    terminal = (pb.TRAINING_SET_STATE_SUCCEEDED, pb.TRAINING_SET_STATE_FAILED)
    found: pb.TrainingSet = started.training_set
    async with asyncio.timeout(BOUND):
        while found.state not in terminal:
            await asyncio.sleep(0.2)
            reply = await client.GetTrainingSet(
                pb.GetTrainingSetRequest(training_set_id=found.training_set_id), metadata=DEV
            )
            found = reply.training_set
    return found


async def result_of(stack: LocalStack, training_set: pb.TrainingSet) -> tuple[pa.Table, bytes]:
    """The training set's Parquet file, as a table and as bytes."""
    async with open_blob_store(stack.blobs) as blobs:
        content = await blobs.get(f"{training_set.output_uri}/part-0.parquet")
    return pq.read_table(io.BytesIO(content)), content
