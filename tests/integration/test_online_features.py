"""The online read library against the real Redis: layout, one round trip, statuses.

Values computed by the streaming executor are written as the streamer will write
them (one pipelined batch) and read back as the gateway will read them: the same
values, windows slid to the read time (a count over 1 h read long after the last
event is 0, as the batch path says), NOT_FOUND with the default for an entity
never written or written in the first key layout, EXPIRED with the default once
the TTL has passed, NOT_FOUND naming an unknown feature.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from redis.asyncio import Redis

from strata.core import redis
from strata.core.errors import NotFoundError
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.core.settings import RedisSettings, load
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
from strata.transforms.online import online_key, read_online, write_online
from strata.transforms.streaming import FeatureRow, StreamingExecutor
from strata.transforms.types import ColumnType, FeatureStatus

T0 = datetime(2026, 6, 1, 8, tzinfo=UTC)


def courier_view() -> FeatureView:
    return FeatureView(
        name=f"couriers_{uuid.uuid4().hex[:12]}",
        entities=("courier_id", "city"),
        event_time="event_time",
        source=TopicSource(
            "couriers",
            (
                Column("courier_id", ColumnType.INT64),
                Column("city", ColumnType.STRING),
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
        ttl="2h",
    )


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    connection = redis.client(load(RedisSettings))
    try:
        yield connection
    finally:
        await connection.aclose()


async def test_values_written_by_the_stream_read_back_with_their_status(
    client: Redis, online_reads: MultiplexedConnection
) -> None:
    view = courier_view()
    executor = StreamingExecutor(view)
    touched = executor.ingest(
        [
            {"courier_id": 1, "city": "oslo", "event_time": T0, "minutes": 20.0},
            {
                "courier_id": 1,
                "city": "oslo",
                "event_time": T0 + timedelta(minutes=10),
                "minutes": 41.5,
            },
            {"courier_id": 2, "city": "rome", "event_time": T0, "minutes": None},
        ]
    )
    now = T0 + timedelta(minutes=10)
    rows = {entity: executor.online_row(entity) for entity in touched}
    try:
        await write_online(client, view, rows)
        features = ["minutes", "deliveries_1h", "late", "minutes_mean_1h"]
        entities = [(1, "oslo"), (2, "rome"), (3, "oslo")]
        read = await read_online(online_reads, view, entities, features, now)

        assert [[v.value for v in row] for row in read] == [
            [41.5, 2, True, 30.75],
            [-1.0, 1, False, None],  # null minutes: the defaults, still PRESENT
            [-1.0, None, False, None],
        ]
        assert [row[0].status for row in read] == [
            FeatureStatus.PRESENT,
            FeatureStatus.PRESENT,
            FeatureStatus.NOT_FOUND,
        ]
        assert read[0][0].event_time == T0 + timedelta(minutes=10)
        assert read[2][0].event_time is None

        stale = FeatureRow({"minutes": None}, now, FeatureStatus.PRESENT)
        await write_online(client, view, {(4, "oslo"): stale})
        rows[(4, "oslo")] = stale
        (fourth,) = await read_online(online_reads, view, [(4, "oslo")], ["minutes", "late"], now)
        assert [v.value for v in fourth] == [-1.0, False]  # stored nulls read as the defaults

        later = T0 + timedelta(minutes=65)
        slid = await read_online(online_reads, view, entities[:2], features, later)
        assert [[v.value for v in row] for row in slid] == [
            [41.5, 1, True, 41.5],  # the 08:00 delivery has left the hour
            [-1.0, 0, False, None],
        ]
        batch = feature_values(
            view,
            pa.Table.from_pylist(
                [
                    {"courier_id": 1, "city": "oslo", "event_time": T0, "minutes": 20.0},
                    {"courier_id": 1, "city": "oslo", "event_time": now, "minutes": 41.5},
                ]
            ),
            pa.table({"courier_id": [1], "city": ["oslo"], "at": [T0 + timedelta(minutes=65)]}),
        )
        assert [v.value for v in slid[0]] == [batch.values.column(f)[0].as_py() for f in features]

        expired = now + timedelta(hours=2)
        gone = await read_online(online_reads, view, entities[:1], ["minutes"], expired)
        assert (gone[0][0].status, gone[0][0].value) == (FeatureStatus.EXPIRED, -1.0)
        assert gone[0][0].event_time == T0 + timedelta(minutes=10)
    finally:
        await client.delete(*(online_key(view, entity) for entity in rows))


async def test_a_hash_of_the_first_layout_reads_as_not_found(
    client: Redis, online_reads: MultiplexedConnection
) -> None:
    view = courier_view()
    first_layout = f'strata:features:{view.name}:[1,"oslo"]'
    await client.hset(
        first_layout,
        mapping={"__event_time": str(int(T0.timestamp() * 1_000_000)), "deliveries_1h": "3"},
    )
    try:
        (row,) = await read_online(online_reads, view, [(1, "oslo")], ["deliveries_1h"], T0)
    finally:
        await client.delete(first_layout)
    assert (row[0].status, row[0].value) == (FeatureStatus.NOT_FOUND, None)
    assert online_key(view, (1, "oslo")).startswith(f"strata:features:2:{view.name}:")


async def test_an_unknown_feature_is_not_found_by_name(online_reads: MultiplexedConnection) -> None:
    view = courier_view()
    with pytest.raises(NotFoundError) as caught:
        await read_online(online_reads, view, [(1, "oslo")], ["speed"], T0)
    assert caught.value.what == f"feature '{view.name}:speed'"
