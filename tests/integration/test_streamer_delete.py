"""``DeleteFeatureView`` against a real ``python -m strata.streamer`` on the real stack.

What a team relies on: deleting a view removes every version of it from the
catalog (it reads as NOT_FOUND, and its name can be applied again from version
1), stops its stream (events produced afterwards reach Redis no more) and removes
its online values, while the Parquet partitions its stream landed stay in the
blob store; a caller outside the view's groups, or without the developer role,
cannot delete it; an unknown view is NOT_FOUND naming it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from conftest import LocalStack
from redis.asyncio import Redis
from service_processes import running
from test_streamer_offline import announced, events, online_minutes, produce
from topics import topic_with_dead_letters

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.blobs import open_blob_store
from strata.core.rpc.status import field_violations
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
)
from strata.transforms.online import key_prefix
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

TOKENS = {
    "dev-token": {"principal": "alice", "roles": ["developer"]},
    "fraud-dev-token": {"principal": "carol", "roles": ["developer", "fraud"]},
    "fraud-viewer-token": {"principal": "bob", "roles": ["viewer", "fraud"]},
}


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


DEV = _as("dev-token")
FRAUD_DEV = _as("fraud-dev-token")
FRAUD_VIEWER = _as("fraud-viewer-token")


@pytest.fixture(scope="module")
async def streamer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A streamer process; yields its address once it is SERVING."""
    folder = tmp_path_factory.mktemp("streamer")
    async with running(
        "streamer", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS), STRATA_BLOB_BACKEND="s3"
    ) as service:
        yield service.address


@pytest.fixture
async def client(streamer: str) -> AsyncIterator[FeatureServiceStub]:
    async with grpc.aio.insecure_channel(streamer) as channel:
        yield FeatureServiceStub(channel)


def courier_view(
    name: str, topic: str, *, description: str = "", groups: tuple[str, ...] = ()
) -> FeatureView:
    return FeatureView(
        name=name,
        description=description,
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
        allowed_groups=groups,
    )


def _name(label: str) -> str:
    return f"{label}_{uuid.uuid4().hex[:10]}"


async def _apply(client: FeatureServiceStub, view: FeatureView) -> pb.ApplyFeatureViewResponse:
    request = pb.ApplyFeatureViewRequest(spec=view_to_spec(view))
    reply: pb.ApplyFeatureViewResponse = await client.ApplyFeatureView(request, metadata=DEV)
    return reply


async def _keys(online: Redis, view: FeatureView) -> list[bytes]:
    return [key async for key in online.scan_iter(match=f"{key_prefix(view)}*")]


async def test_delete_removes_versions_stream_and_online_values_but_not_partitions(
    client: FeatureServiceStub, online: Redis, local_stack: LocalStack
) -> None:
    suffix = uuid.uuid4().hex[:12]
    async with (
        topic_with_dead_letters(f"test.raw.delete.{suffix}") as topic,
        topic_with_dead_letters(f"test.raw.witness.{suffix}") as witness_topic,
    ):
        name = _name("deleted")
        await _apply(client, courier_view(name, topic))
        view = courier_view(name, topic, description="second version")
        assert (await _apply(client, view)).feature_view.version == 2
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
        produced = events(start, 9)
        await produce(topic, produced)
        partitions = await announced(topic, len(produced))
        await online_minutes(client, view, 2, 8.0)
        assert len(await _keys(online, view)) == 3

        reply = await client.DeleteFeatureView(pb.DeleteFeatureViewRequest(name=name), metadata=DEV)

        assert (reply.version, reply.versions_deleted, reply.online_keys_deleted) == (2, 2, 3)
        assert await _keys(online, view) == []
        for version in (0, 1, 2):
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await client.GetFeatureView(
                    pb.GetFeatureViewRequest(name=name, version=version), metadata=DEV
                )
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await client.ListFeatureViews(pb.ListFeatureViewsRequest(), metadata=DEV)
        assert name not in {v.spec.name for v in listed.feature_views}
        async with open_blob_store(local_stack.blobs) as blobs:
            for partition in partitions:
                assert (await blobs.stat(partition.uri)).size == partition.size_bytes

        # The streams' loop stops a deleted view's stream before it starts a newer
        # view's, so once the witness (applied after the deletion) has written a
        # value, events on the deleted view's topic are no longer consumed.
        witness = courier_view(_name("witness"), witness_topic)
        await _apply(client, witness)
        await produce(witness_topic, [{**produced[0], "minutes": 1.0}])
        await online_minutes(client, witness, 0, 1.0)
        await produce(topic, events(start, 3, first=9))
        await produce(witness_topic, [{**produced[0], "minutes": 2.0}])
        await online_minutes(client, witness, 0, 2.0)
        assert await _keys(online, view) == []

        again = await _apply(client, view)
        assert (again.feature_view.version, again.changed) == (1, True)
        await client.DeleteFeatureView(pb.DeleteFeatureViewRequest(name=name), metadata=DEV)
        await client.DeleteFeatureView(pb.DeleteFeatureViewRequest(name=witness.name), metadata=DEV)


async def test_delete_is_refused_outside_the_groups_and_without_the_developer_role(
    client: FeatureServiceStub,
) -> None:
    name = _name("guarded")
    await _apply(client, courier_view(name, f"raw.{name}", groups=("fraud",)))
    request = pb.DeleteFeatureViewRequest(name=name)

    with pytest.raises(grpc.aio.AioRpcError) as outside:
        await client.DeleteFeatureView(request, metadata=DEV)
    with pytest.raises(grpc.aio.AioRpcError) as viewer:
        await client.DeleteFeatureView(request, metadata=FRAUD_VIEWER)
    kept = await client.GetFeatureView(pb.GetFeatureViewRequest(name=name), metadata=FRAUD_DEV)
    deleted = await client.DeleteFeatureView(request, metadata=FRAUD_DEV)

    assert outside.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert name in (outside.value.details() or "")
    assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert kept.feature_view.version == 1
    assert (deleted.version, deleted.versions_deleted) == (1, 1)


async def test_deleting_an_unknown_or_unnamed_view_is_refused_naming_it(
    client: FeatureServiceStub,
) -> None:
    name = _name("never_applied")

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.DeleteFeatureView(pb.DeleteFeatureViewRequest(name=name), metadata=DEV)
    with pytest.raises(grpc.aio.AioRpcError) as unnamed:
        await client.DeleteFeatureView(pb.DeleteFeatureViewRequest(), metadata=DEV)

    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert name in (unknown.value.details() or "")
    assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in field_violations(unnamed.value)
