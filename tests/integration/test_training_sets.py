"""Point-in-time training sets from a real streamer's offline store.

What a team relies on: for label rows at given times, every feature value is the
one the feature had at that time (never a value from a later event), expired
values (past the view's TTL) and entities without values read as the feature's
defaults, label columns are copied as they are; the job's state, progress and the
result's sha256 are visible through GetTrainingSet and MaterializationFinished
announces it; a label file lacking the time or an entity column, an unknown view
and a view outside the caller's groups are refused, naming what is wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from conftest import LocalStack
from service_processes import running
from test_streamer_offline import (
    BOUND,
    DEV,
    KAFKA,
    announced,
    materialized,
    produce,
    result_of,
    topic,
    upload,
)

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core import kafka
from strata.core.envelope import open_envelope
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

__all__ = ["topic"]
"""The raw-topic fixture is shared with the offline-store tests."""

TOKENS = {
    "dev-token": {"principal": "alice", "roles": ["developer"]},
    "ops-token": {"principal": "olga", "roles": ["developer", "ops"]},
}
OPS = (("authorization", "Bearer ops-token"),)
ENV = {"STRATA_AUTH_TOKENS": json.dumps(TOKENS), "STRATA_BLOB_BACKEND": "s3"}
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def minutes(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


def courier_view(topic: str, groups: tuple[str, ...] = ()) -> FeatureView:
    return FeatureView(
        name=f"training_{uuid.uuid4().hex[:12]}",
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
            Feature(
                "deliveries_1h",
                aggregation=Aggregation(AggregationFunction.COUNT, "1h"),
                default=0,
            ),
            Feature("minutes", default=-1.0),
        ),
        ttl="2h",
        allowed_groups=groups,
    )


EVENTS = [
    {"courier_id": 1, "event_time": minutes(0).isoformat(), "minutes": 10.0},
    {"courier_id": 1, "event_time": minutes(30).isoformat(), "minutes": 20.0},
    {"courier_id": 2, "event_time": minutes(10).isoformat(), "minutes": 5.0},
    {"courier_id": 1, "event_time": minutes(50).isoformat(), "minutes": 30.0},
]

LABELS = pa.table(
    {
        "courier_id": pa.array([1, 1, 1, 2, 3], pa.int64()),
        "event_time": pa.array(
            [minutes(40), minutes(50), minutes(200), minutes(5), minutes(60)],
            pa.timestamp("us", tz="UTC"),
        ),
        "late": [True, False, True, False, True],
    }
)
"""Courier 1 between its events, at one, and long after (expired); courier 2 before its
first event; courier 3, which has no events."""

EXPECTED = {
    # 2 deliveries in (t-1h, t] at minute 40; the 30.0 of minute 50 is in the future.
    "deliveries_1h": [2, 3, 0, 0, 0],
    "minutes": [20.0, 30.0, -1.0, -1.0, -1.0],
}
"""Worked out by hand from EVENTS and LABELS: TTL 2h expires courier 1 at minute 200."""


async def test_a_training_set_holds_the_point_in_time_values(
    tmp_path: Path, topic: str, local_stack: LocalStack
) -> None:
    view = courier_view(topic)
    async with (
        running("streamer", tmp_path, **ENV) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        client = FeatureServiceStub(channel)
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        await produce(topic, EVENTS)
        partitions = await announced(topic, len(EVENTS))
        request = pb.MaterializeTrainingSetRequest(
            labels_uri=await upload(local_stack, LABELS),
            features=[f"{view.name}:minutes", f"{view.name}:deliveries_1h"],
            request_id=uuid.uuid4().hex,
        )
        training_set = await materialized(client, request)
        again = await client.MaterializeTrainingSet(request, metadata=DEV)

    assert training_set.state == pb.TRAINING_SET_STATE_SUCCEEDED, training_set.message
    assert again.training_set.training_set_id == training_set.training_set_id
    table, content = await result_of(local_stack, training_set)
    assert table.column_names == [
        "courier_id",
        "event_time",
        "late",
        f"{view.name}:minutes",
        f"{view.name}:deliveries_1h",
    ]
    assert table.select(["courier_id", "event_time", "late"]).equals(LABELS)
    assert table.column(f"{view.name}:minutes").to_pylist() == EXPECTED["minutes"]
    assert table.column(f"{view.name}:deliveries_1h").to_pylist() == EXPECTED["deliveries_1h"]
    assert training_set.checksum == f"sha256:{hashlib.sha256(content).hexdigest()}"
    assert training_set.progress == 1.0
    assert (training_set.label_rows, training_set.rows_written) == (5, 5)
    assert [(v.name, v.version) for v in training_set.feature_views] == [(view.name, 1)]
    assert {p.partition for p in training_set.partitions} == {p.partition for p in partitions}
    finished = await materialization_finished(training_set.training_set_id)
    assert finished.feature_view.name == view.name
    assert finished.uri == f"{training_set.output_uri}/part-0.parquet"
    assert finished.rows_written == 5


async def test_bad_training_set_requests_are_refused_naming_what_is_wrong(
    tmp_path: Path, topic: str, local_stack: LocalStack
) -> None:
    view = courier_view(topic)
    restricted = courier_view(topic, groups=("ops",))
    no_time = await upload(local_stack, LABELS.drop_columns(["event_time"]))
    no_key = await upload(local_stack, LABELS.drop_columns(["courier_id"]))
    labels = await upload(local_stack, LABELS)
    async with (
        running("streamer", tmp_path, **ENV) as streamer,
        grpc.aio.insecure_channel(streamer.address) as channel,
    ):
        client = FeatureServiceStub(channel)
        for spec in (view, restricted):
            await client.ApplyFeatureView(
                pb.ApplyFeatureViewRequest(spec=view_to_spec(spec)), metadata=DEV
            )
        features = [f"{view.name}:minutes"]

        async def refused(request: pb.MaterializeTrainingSetRequest) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.MaterializeTrainingSet(request, metadata=DEV)
            return raised.value

        error = await refused(
            pb.MaterializeTrainingSetRequest(labels_uri=no_time, features=features)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'event_time'" in (error.details() or "")
        error = await refused(
            pb.MaterializeTrainingSetRequest(
                labels_uri=labels, features=features, event_time_column="label_time"
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'label_time'" in (error.details() or "")
        error = await refused(
            pb.MaterializeTrainingSetRequest(labels_uri=no_key, features=features)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'courier_id'" in (error.details() or "")
        error = await refused(
            pb.MaterializeTrainingSetRequest(labels_uri=labels, features=["no_such_view:minutes"])
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "'no_such_view'" in (error.details() or "")
        error = await refused(
            pb.MaterializeTrainingSetRequest(
                labels_uri=labels, features=[f"{restricted.name}:minutes"]
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert restricted.name in (error.details() or "")
        allowed = await client.MaterializeTrainingSet(
            pb.MaterializeTrainingSetRequest(
                labels_uri=labels, features=[f"{restricted.name}:minutes"]
            ),
            metadata=OPS,
        )
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await client.GetTrainingSet(
                pb.GetTrainingSetRequest(training_set_id=allowed.training_set.training_set_id),
                metadata=DEV,
            )
        assert hidden.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def materialization_finished(training_set_id: str) -> pb.MaterializationFinished:
    """The MaterializationFinished of a training set, from strata.features.events."""
    consumer = kafka.consumer(
        KAFKA, "strata.features.events", group_id=f"test-finished-{uuid.uuid4().hex[:8]}"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(BOUND):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        payload = open_envelope(record.value).payload
                        if (
                            isinstance(payload, pb.MaterializationFinished)
                            and payload.training_set_id == training_set_id
                        ):
                            return payload
    finally:
        await consumer.stop()
