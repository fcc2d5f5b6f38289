"""``BackfillFeatureView`` against a real streamer: online values rebuilt from the offline store.

What a team relies on: after the online store lost a view's values, a backfill
from the view's offline partitions brings back exactly what the stream had
written (the same hashes, so the same GetOnlineFeatures answers), reporting its
progress as it goes and announcing the result with MaterializationFinished; event
times outside the requested range are not read; a dataset-sourced view gets online
values from its announced partitions; an unknown view is NOT_FOUND naming it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from conftest import LocalStack
from redis.asyncio import Redis
from service_processes import running
from test_streamer_datasets import land
from test_streamer_offline import BOUND, DEV, announced, produce
from topics import topic_with_dead_letters

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core import kafka
from strata.core.bus import Bus
from strata.core.envelope import open_envelope
from strata.core.settings import KafkaSettings, load
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    DatasetSource,
    Feature,
    FeatureView,
    Source,
    TopicSource,
    Transform,
)
from strata.transforms.online import delete_online, key_prefix
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
COLUMNS = (
    Column("courier_id", ColumnType.INT64),
    Column("event_time", ColumnType.TIMESTAMP),
    Column("minutes", ColumnType.DOUBLE),
)


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


def courier_view(source: Source) -> FeatureView:
    return FeatureView(
        name=f"backfilled_{uuid.uuid4().hex[:12]}",
        entities=("courier_id",),
        event_time="event_time",
        source=source,
        transforms=(Transform("hours", "minutes / 60"),),
        features=(
            Feature("deliveries_1h", aggregation=Aggregation(AggregationFunction.COUNT, "1h")),
            Feature(
                "hours_2h", column="hours", aggregation=Aggregation(AggregationFunction.SUM, "2h")
            ),
            Feature("minutes", default=-1.0),
        ),
        ttl="1d",
    )


def _features(view: FeatureView) -> list[str]:
    return [f"{view.name}:{name}" for name in ("deliveries_1h", "hours_2h", "minutes")]


async def _online(
    client: FeatureServiceStub, view: FeatureView, couriers: list[int]
) -> pb.GetOnlineFeaturesResponse:
    request = pb.GetOnlineFeaturesRequest(
        features=_features(view),
        entities=[pb.EntityRow(keys={"courier_id": pb.Value(int64_value=c)}) for c in couriers],
    )
    reply: pb.GetOnlineFeaturesResponse = await client.GetOnlineFeatures(request, metadata=DEV)
    return reply


async def _hashes(online: Redis, view: FeatureView) -> dict[bytes, dict[bytes | str, bytes | str]]:
    keys = [key async for key in online.scan_iter(match=f"{key_prefix(view)}*")]
    return {key: await online.hgetall(key) for key in keys}


async def _backfill(
    client: FeatureServiceStub, request: pb.BackfillFeatureViewRequest
) -> list[pb.BackfillFeatureViewResponse]:
    async with asyncio.timeout(BOUND):
        return [step async for step in client.BackfillFeatureView(request, metadata=DEV)]


async def _online_materialization(view: str) -> pb.MaterializationFinished:
    """The MaterializationFinished of ``view``'s online store, from strata.features.events."""
    consumer = kafka.consumer(
        load(KafkaSettings), "strata.features.events", group_id=f"test-{uuid.uuid4().hex[:8]}"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(BOUND):
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        payload = open_envelope(record.value).payload
                        if (
                            isinstance(payload, pb.MaterializationFinished)
                            and payload.feature_view.name == view
                            and payload.target == pb.MATERIALIZATION_TARGET_ONLINE
                        ):
                            return payload
    finally:
        await consumer.stop()


async def _backfill_once_recorded(
    client: FeatureServiceStub, request: pb.BackfillFeatureViewRequest
) -> pb.BackfillFeatureViewResponse:
    """The last step of a backfill that found a partition.

    An announcement reaches the streamer through Kafka: until it is recorded, a
    backfill finds no partition.
    """
    async with asyncio.timeout(BOUND):
        while True:
            last = (await _backfill(client, request))[-1]
            if last.partitions:
                return last
            await asyncio.sleep(0.2)


def _events(now: datetime) -> list[dict[str, Any]]:
    """Eleven events of three couriers within the last 100 minutes, some out of order."""
    return [
        {
            "courier_id": i % 3,
            "event_time": (
                now - timedelta(minutes=100 - 9 * i + (5 if i % 4 == 0 else 0))
            ).isoformat(),
            "minutes": float(10 + i),
        }
        for i in range(11)
    ]


async def test_a_backfill_after_losing_redis_restores_what_the_stream_wrote(
    client: FeatureServiceStub, online: Redis
) -> None:
    async with topic_with_dead_letters(f"test.raw.backfill.{uuid.uuid4().hex[:12]}", 2) as topic:
        view = courier_view(TopicSource(topic, COLUMNS))
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        now = datetime.now(UTC).replace(microsecond=0)
        produced = _events(now)
        await produce(topic, produced)
        await announced(topic, len(produced))
        streamed = await _hashes(online, view)
        assert len(streamed) == 3
        before = await _online(client, view, [0, 1, 2, 7])

        assert await delete_online(online, view.name) == 3
        lost = await _online(client, view, [0, 1, 2])
        steps = await _backfill(client, pb.BackfillFeatureViewRequest(name=view.name))
        after = await _online(client, view, [0, 1, 2, 7])

        assert {v.status for row in lost.rows for v in row.values} == {pb.FEATURE_STATUS_NOT_FOUND}
        assert await _hashes(online, view) == streamed
        assert after.rows == before.rows
        last = steps[-1]
        assert last.done
        assert not any(step.done for step in steps[:-1])
        assert (last.entities_written, last.entities_total) == (3, 3)
        assert last.rows_read == len(produced)
        assert (last.feature_view.name, last.feature_view.version) == (view.name, 1)
        assert last.partitions
        assert {p.dataset for p in last.partitions} == {topic}
        finished = await _online_materialization(view.name)
        assert finished.feature_view.version == 1
        assert finished.rows_written == 3
        times = [datetime.fromisoformat(e["event_time"]) for e in produced]
        assert finished.start_time.ToDatetime(UTC) == min(times)
        assert finished.end_time.ToDatetime(UTC) == max(times)


async def test_rows_before_the_start_time_are_not_read(
    client: FeatureServiceStub, online: Redis
) -> None:
    async with topic_with_dead_letters(f"test.raw.backfill.{uuid.uuid4().hex[:12]}") as topic:
        view = courier_view(TopicSource(topic, COLUMNS))
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        now = datetime.now(UTC).replace(microsecond=0)
        produced = [
            {"courier_id": 5, "event_time": (now - timedelta(minutes=m)).isoformat(), "minutes": m}
            for m in (50.0, 40.0, 30.0)
        ]
        await produce(topic, produced)
        await announced(topic, len(produced))
        await delete_online(online, view.name)
        request = pb.BackfillFeatureViewRequest(name=view.name)
        request.start_time.FromDatetime(now - timedelta(minutes=45))

        last = (await _backfill(client, request))[-1]
        reply = await _online(client, view, [5])

        assert last.rows_read == 2
        values = reply.rows[0].values
        assert values[0].value.int64_value == 2
        assert values[1].value.double_value == pytest.approx((40.0 + 30.0) / 60)
        assert values[2].value.double_value == 30.0


async def test_a_dataset_sourced_view_gets_online_values_from_its_partitions(
    client: FeatureServiceStub, local_stack: LocalStack
) -> None:
    dataset = f"backfill_{uuid.uuid4().hex[:12]}"
    view = courier_view(DatasetSource(dataset, COLUMNS))
    await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [(1, now - timedelta(minutes=90), 30.0), (1, now - timedelta(minutes=20), 60.0)]
    async with Bus("streamer-backfill-test", kafka=load(KafkaSettings)) as bus:
        await bus.publish(await land(local_stack, view, dataset, "date=today", rows))
    last = await _backfill_once_recorded(client, pb.BackfillFeatureViewRequest(name=view.name))

    reply = await _online(client, view, [1])

    assert (last.rows_read, last.entities_written) == (2, 1)
    values = reply.rows[0].values
    assert [v.status for v in values] == [pb.FEATURE_STATUS_PRESENT] * 3
    assert values[0].value.int64_value == 1
    assert values[1].value.double_value == pytest.approx(1.5)
    assert values[2].value.double_value == 60.0


async def test_an_unknown_view_or_an_inverted_range_is_refused(client: FeatureServiceStub) -> None:
    name = f"never_{uuid.uuid4().hex[:10]}"
    backwards = pb.BackfillFeatureViewRequest(name=name)
    backwards.start_time.FromDatetime(datetime(2026, 6, 2, tzinfo=UTC))
    backwards.end_time.FromDatetime(datetime(2026, 6, 1, tzinfo=UTC))

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _backfill(client, pb.BackfillFeatureViewRequest(name=name))
    with pytest.raises(grpc.aio.AioRpcError) as inverted:
        await _backfill(client, backwards)

    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert name in (unknown.value.details() or "")
    assert inverted.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time" in (inverted.value.details() or "")
