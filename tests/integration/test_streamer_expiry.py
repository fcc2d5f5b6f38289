"""Online hashes expire: an idle entity does not keep Redis growing for ever.

What a team relies on: every hash the streamer writes for a view with a TTL
carries an expiry of the TTL plus the view's longest window, renewed by each
write, while reads before it are unchanged (the values the events give); a hash
past its expiry is gone and reads as NOT_FOUND with the defaults; a view
without a TTL keeps its hashes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from redis.asyncio import Redis
from service_processes import running
from test_streamer_offline import BOUND, DEV, produce
from topics import topic_with_dead_letters

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
)
from strata.transforms.online import lifetime_ms, online_key, read_online, write_online
from strata.transforms.spec import view_to_spec
from strata.transforms.streaming import StreamingExecutor
from strata.transforms.types import ColumnType, FeatureStatus

pytestmark = pytest.mark.integration

TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
HOUR_MS = 3_600_000


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


def courier_view(topic: str, ttl: str | None) -> FeatureView:
    return FeatureView(
        name=f"expiring_{uuid.uuid4().hex[:12]}",
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
        ttl=ttl,
    )


async def _streamed(
    client: FeatureServiceStub, view: FeatureView, topic: str
) -> pb.GetOnlineFeaturesResponse:
    """Apply ``view``, produce three events of courier 7, and read once all are in."""
    await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV)
    now = datetime.now(UTC).replace(microsecond=0)
    await produce(
        topic,
        [
            {"courier_id": 7, "event_time": (now - timedelta(minutes=m)).isoformat(), "minutes": m}
            for m in (30.0, 20.0, 10.0)
        ],
    )
    request = pb.GetOnlineFeaturesRequest(
        features=[f"{view.name}:deliveries_1h", f"{view.name}:minutes"],
        entities=[pb.EntityRow(keys={"courier_id": pb.Value(int64_value=7)})],
    )
    async with asyncio.timeout(BOUND):
        while True:
            reply: pb.GetOnlineFeaturesResponse = await client.GetOnlineFeatures(
                request, metadata=DEV
            )
            if reply.rows[0].values[0].value.int64_value == 3:
                return reply
            await asyncio.sleep(0.1)


async def test_the_streamers_hashes_expire_after_ttl_and_window_and_read_unchanged(
    client: FeatureServiceStub, online: Redis
) -> None:
    async with topic_with_dead_letters(f"test.raw.expiry.{uuid.uuid4().hex[:12]}") as topic:
        view = courier_view(topic, "2h")
        reply = await _streamed(client, view, topic)
        remaining = await online.pttl(online_key(view, (7,)))

    values = reply.rows[0].values
    assert [v.status for v in values] == [pb.FEATURE_STATUS_PRESENT] * 2
    assert values[1].value.double_value == 10.0
    assert lifetime_ms(view) == 3 * HOUR_MS
    # Counted from the last write, which was at most the test's bound ago.
    assert 3 * HOUR_MS - BOUND * 1000 < remaining <= 3 * HOUR_MS


async def test_a_view_without_ttl_keeps_its_hashes(
    client: FeatureServiceStub, online: Redis
) -> None:
    async with topic_with_dead_letters(f"test.raw.expiry.{uuid.uuid4().hex[:12]}") as topic:
        view = courier_view(topic, None)
        await _streamed(client, view, topic)

        assert await online.pttl(online_key(view, (7,))) == -1


async def test_a_write_renews_the_expiry_and_an_expired_hash_reads_not_found(
    online: Redis, online_reads: MultiplexedConnection
) -> None:
    view = FeatureView(
        name=f"expiring_{uuid.uuid4().hex[:12]}",
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            "raw.unused",
            (
                Column("courier_id", ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("minutes", ColumnType.DOUBLE),
            ),
        ),
        features=(Feature("minutes", default=-1.0),),
        ttl="1s",
    )
    executor = StreamingExecutor(view)
    executor.ingest([{"courier_id": 7, "event_time": datetime.now(UTC), "minutes": 5.0}])
    key = online_key(view, (7,))

    await write_online(online, view, {(7,): executor.online_row((7,))})
    await online.pexpire(key, 600_000)
    await write_online(online, view, {(7,): executor.online_row((7,))})
    renewed = await online.pttl(key)
    async with asyncio.timeout(BOUND):
        while True:
            if not await online.exists(key):
                break
            await asyncio.sleep(0.1)
    [[minutes]] = await read_online(online_reads, view, [(7,)], ["minutes"], datetime.now(UTC))

    assert lifetime_ms(view) == 1000
    assert 0 < renewed <= 1000
    assert (minutes.status, minutes.value) == (FeatureStatus.NOT_FOUND, -1.0)
