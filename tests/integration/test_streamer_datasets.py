"""Training sets over a dataset-sourced view, from partitions another producer landed.

What a team relies on: Parquet partitions of a dataset, landed in the blob store
and announced with DataArrived on ``strata.data.arrived``, are what a training
set over a view sourced from that dataset reads: each label row gets the values
the features had at its time (point in time, TTL and defaults honoured), the
same announcement delivered twice counts once, and a partition whose file no
longer matches its announced checksum fails the job naming the partition and
both checksums; an announcement the view cannot read (not Parquet) is
dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import LocalStack
from service_processes import running
from test_streamer_offline import BOUND, DEV, materialized, result_of, upload

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.blobs import open_blob_store
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from strata.core.topics import DATA_ARRIVED, dead_letter_topic
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    DatasetSource,
    Feature,
    FeatureView,
)
from strata.transforms.rows import source_schema
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def minutes(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


@pytest.fixture(scope="module")
async def streamer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    folder = tmp_path_factory.mktemp("streamer")
    async with running(
        "streamer", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS), STRATA_BLOB_BACKEND="s3"
    ) as service:
        yield service.address


@pytest.fixture
async def client(streamer: str) -> AsyncIterator[FeatureServiceStub]:
    async with grpc.aio.insecure_channel(streamer) as channel:
        yield FeatureServiceStub(channel)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    async with Bus("streamer-datasets-test", kafka=load(KafkaSettings)) as connected:
        yield connected


def courier_view(dataset: str) -> FeatureView:
    return FeatureView(
        name=f"from_dataset_{uuid.uuid4().hex[:12]}",
        entities=("courier_id",),
        event_time="event_time",
        source=DatasetSource(
            dataset,
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
        ttl="2h",
    )


async def land(
    stack: LocalStack,
    view: FeatureView,
    dataset: str,
    partition: str,
    rows: list[tuple[int, datetime, float]],
) -> DataArrived:
    """Write ``rows`` (courier, event time, minutes) as a partition's Parquet file."""
    table = pa.Table.from_pylist(
        [{"courier_id": c, "event_time": t, "minutes": m} for c, t, m in rows],
        schema=source_schema(view),
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    content = sink.getvalue()
    key = f"lake/{dataset}/{partition}/part-0.parquet"
    async with open_blob_store(stack.blobs) as blobs:
        await blobs.put(key, content)
    return DataArrived(
        dataset=dataset,
        partition=partition,
        uri=key,
        row_count=table.num_rows,
        size_bytes=len(content),
        checksum=f"sha256:{hashlib.sha256(content).hexdigest()}",
        format="parquet",
    )


def training_request(view: FeatureView, labels_uri: str) -> pb.MaterializeTrainingSetRequest:
    return pb.MaterializeTrainingSetRequest(
        labels_uri=labels_uri,
        features=[f"{view.name}:deliveries_1h", f"{view.name}:minutes"],
    )


async def with_partitions(
    client: FeatureServiceStub, request: pb.MaterializeTrainingSetRequest, count: int
) -> pb.TrainingSet:
    """A training set built once the streamer has recorded ``count`` partitions.

    The announcements reach the streamer through Kafka, so the first jobs may see
    fewer; each job says which partitions it read.
    """
    async with asyncio.timeout(BOUND):
        while True:
            built = await materialized(client, request)
            if len(built.partitions) >= count:
                return built
            await asyncio.sleep(0.2)


async def test_a_training_set_reads_the_announced_partitions_point_in_time(
    client: FeatureServiceStub, bus: Bus, local_stack: LocalStack
) -> None:
    dataset = f"deliveries_{uuid.uuid4().hex[:12]}"
    view = courier_view(dataset)
    await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV)
    first = await land(
        local_stack,
        view,
        dataset,
        "date=2026-06-01/hour=08a",
        [(1, minutes(0), 10.0), (2, minutes(10), 5.0), (1, minutes(20), 20.0)],
    )
    second = await land(
        local_stack, view, dataset, "date=2026-06-01/hour=08b", [(1, minutes(50), 30.0)]
    )
    sent = await bus.publish(first)
    await bus.publish(first, event_id=sent.event_id)
    await bus.publish(second)
    labels = pa.table(
        {
            "courier_id": pa.array([1, 1, 1, 1, 2, 2, 3], pa.int64()),
            "event_time": pa.array(
                [
                    minutes(25),  # after the first two events of courier 1, not the third
                    minutes(55),  # all three within the hour
                    minutes(150),  # no event in the last hour; the latest is 100 min old
                    minutes(180),  # the latest is 130 min old: past the 2 h ttl
                    minutes(5),  # before courier 2's only event
                    minutes(10),  # at it
                    minutes(60),  # a courier with no events
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "late": pa.array([False, True, False, True, False, False, True]),
        }
    )

    built = await with_partitions(
        client, training_request(view, await upload(local_stack, labels)), 2
    )

    assert built.state == pb.TRAINING_SET_STATE_SUCCEEDED, built.message
    assert sorted((p.dataset, p.partition, p.checksum) for p in built.partitions) == [
        (dataset, first.partition, first.checksum),
        (dataset, second.partition, second.checksum),
    ]
    table, _ = await result_of(local_stack, built)
    assert table.column("late").to_pylist() == labels.column("late").to_pylist()
    assert table.column(f"{view.name}:deliveries_1h").to_pylist() == [2, 3, 0, None, None, 1, None]
    assert table.column(f"{view.name}:minutes").to_pylist() == [
        20.0,
        30.0,
        30.0,
        -1.0,
        -1.0,
        5.0,
        -1.0,
    ]


async def test_a_partition_changed_after_its_announcement_fails_the_job_naming_it(
    client: FeatureServiceStub, bus: Bus, local_stack: LocalStack
) -> None:
    dataset = f"rewritten_{uuid.uuid4().hex[:12]}"
    view = courier_view(dataset)
    await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV)
    announced = await land(local_stack, view, dataset, "date=2026-06-01", [(1, minutes(0), 1.0)])
    await bus.publish(announced)
    labels = pa.table(
        {
            "courier_id": pa.array([1], pa.int64()),
            "event_time": pa.array([minutes(30)], pa.timestamp("us", tz="UTC")),
        }
    )
    request = training_request(view, await upload(local_stack, labels))
    assert (await with_partitions(client, request, 1)).state == pb.TRAINING_SET_STATE_SUCCEEDED
    rewritten = await land(local_stack, view, dataset, "date=2026-06-01", [(1, minutes(0), 2.0)])

    failed = await materialized(client, request)

    assert failed.state == pb.TRAINING_SET_STATE_FAILED
    assert "'date=2026-06-01'" in failed.message
    assert dataset in failed.message
    assert announced.checksum in failed.message
    assert rewritten.checksum in failed.message


async def test_an_announcement_a_view_cannot_read_is_dead_lettered_with_the_reason(
    client: FeatureServiceStub, bus: Bus
) -> None:
    dataset = f"csv_{uuid.uuid4().hex[:12]}"
    view = courier_view(dataset)
    await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV)
    sent = await bus.publish(
        DataArrived(
            dataset=dataset,
            partition="date=2026-06-01",
            uri=f"lake/{dataset}/date=2026-06-01/part-0.csv",
            checksum=f"sha256:{'0' * 64}",
            format="csv",
        )
    )

    letter = await _dead_letter(sent.event_id)

    assert letter.cause == DeadLetter.CAUSE_REJECTED
    assert "invalid format" in letter.reason
    assert dataset in letter.reason
    assert "Parquet" in letter.reason


async def _dead_letter(event_id: str) -> DeadLetter:
    """The dead letter of ``event_id`` on strata.data.arrived's dead-letter topic."""
    reader = AIOKafkaConsumer(bootstrap_servers=load(KafkaSettings).bootstrap)
    await reader.start()
    try:
        partition = TopicPartition(dead_letter_topic(DATA_ARRIVED.name), 0)
        reader.assign([partition])
        await reader.seek_to_beginning(partition)
        async with asyncio.timeout(BOUND):
            while True:
                record = await reader.getone()
                letter = DeadLetter.FromString(record.value)
                if letter.event_id == event_id:
                    return letter
    finally:
        await reader.stop()
