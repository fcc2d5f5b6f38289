"""Skew you can see, on the real stack: events -> streamer -> gateway -> registry -> skew report.

What a team relies on: when the online store holds what the streaming path
computed, the features the gateway served equal the batch path's point-in-time
values for the same entities at the same times, and the report says so (no
differing row); when an online writer goes wrong for some entities (here: the
``minutes`` of two of six couriers overwritten in Redis, as a buggy writer would),
the report names that feature, with the share of differing rows equal to the share
of predictions that read a corrupted value, and leaves the other feature clean;
``strata skew`` prints the table and exits 0 (a report), or 1 with ``--fail-on``;
the workflow form returns each feature's share as task outputs, or fails the task
past its ``fail_on``.

Timing rule the test follows: a prediction is only compared once the events it
read are landed offline; the test waits for the DataArrived of every event it
produced before predicting, so it asks for the report with ``settle=0``.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
import redis.asyncio as redis_asyncio
from service_processes import running
from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped]
from strata_cli import run_strata
from test_registry_predictions import kept
from test_streamer_offline import announced, produce
from topics import topic_with_dead_letters

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core import redis
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, RedisSettings, load
from strata.sdk.models import log_model
from strata.sdk.skew import SkewFoundError, skew_report, skew_task
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
)
from strata.transforms.online import encode_row, online_key
from strata.transforms.spec import view_to_spec
from strata.transforms.streaming import FeatureRow
from strata.transforms.types import ColumnType, FeatureStatus

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
COURIERS = (1, 2, 3, 4, 5, 6)
EVENTS = 3 * len(COURIERS)
"""Events before the first predictions: three per courier within the last hour."""
LATE_MINUTES = 1000.0
"""``minutes`` of the late events (plus the courier id), produced after the first predictions."""
CORRUPTED = (2, 5)
"""Couriers whose online ``minutes`` the buggy writer overwrites."""
TAG = uuid.uuid4().hex[:10]
VIEW = f"skew_couriers_{TAG}"
MODEL = f"skew-eta-{TAG}"
MINUTES = f"{VIEW}:minutes"
COUNT = f"{VIEW}:deliveries_1h"


def view(topic: str) -> FeatureView:
    return FeatureView(
        name=VIEW,
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


@dataclass(frozen=True)
class World:
    topic: str
    registry_address: str
    streamer_address: str
    registry: ModelRegistryServiceStub
    features: FeatureServiceStub
    predict: PredictionServiceStub


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("skew")
    auth = load(AuthSettings)
    async with (
        topic_with_dead_letters(f"test.raw.skew.{TAG}", 2) as topic,
        running("registry", folder, STRATA_BLOB_BACKEND="s3") as registry_process,
        running("streamer", folder, STRATA_BLOB_BACKEND="s3") as streamer_process,
        channel(registry_process.address, auth, mode="development") as registry_channel,
        channel(streamer_process.address, auth, mode="development") as streamer_channel,
    ):
        features = FeatureServiceStub(streamer_channel)
        await features.ApplyFeatureView(fpb.ApplyFeatureViewRequest(spec=view_to_spec(view(topic))))
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
        events = [
            {
                "courier_id": courier,
                "event_time": (start + timedelta(minutes=courier + 10 * i)).isoformat(),
                "minutes": courier * 3.0 + i,
            }
            for i in range(EVENTS // len(COURIERS))
            for courier in COURIERS
        ]
        await produce(topic, events)
        await announced(topic, EVENTS)

        registry = ModelRegistryServiceStub(registry_channel)
        rows = np.array([[c, m, h] for c in (1, 2, 3) for m in (5.0, 9.0) for h in (8, 20)])
        fitted = LinearRegression().fit(rows, rows @ np.array([0.5, 2.0, 0.1]))
        await log_model(
            fitted,
            name=MODEL,
            sample=rows,
            registry=registry,
            feature_bindings=[
                pb.FeatureBinding(input="X", features=[COUNT, MINUTES, "request:hour"])
            ],
        )
        await registry.SetAlias(pb.SetAliasRequest(model_name=MODEL, alias="champion", version=1))
        async with (
            running(
                "gateway",
                folder,
                STRATA_GATEWAY_MODELS=json.dumps({MODEL: ["champion"]}),
                STRATA_GATEWAY_REGISTRY=registry_process.address,
                STRATA_GATEWAY_STREAMER=streamer_process.address,
            ) as gateway,
            channel(gateway.address, auth, mode="development") as gateway_channel,
        ):
            yield World(
                topic,
                registry_process.address,
                streamer_process.address,
                registry,
                features,
                PredictionServiceStub(gateway_channel),
            )


async def predict_all(world: World) -> list[str]:
    """One prediction per courier, once the gateway serves the champion; their ids."""
    request = gpb.PredictRequest(
        model_name=MODEL,
        alias="champion",
        rows=[
            gpb.PredictRow(
                entity_keys={"courier_id": fpb.Value(int64_value=courier)},
                features={"hour": fpb.Value(int64_value=12)},
            )
            for courier in COURIERS
        ],
    )
    async with asyncio.timeout(BOUND):
        while True:
            try:
                reply = await world.predict.Predict(request)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.2)
    return [p.prediction_id for p in reply.predictions]


async def corrupt_minutes(couriers: tuple[int, ...]) -> None:
    """Overwrite the online ``minutes`` of ``couriers`` with a wrong value (+100), as an
    online writer with a bug would, leaving the other fields as the streamer wrote them."""
    client: redis_asyncio.Redis = redis.client(load(RedisSettings))
    try:
        spec = view("unused")
        for courier in couriers:
            row = FeatureRow(
                {"minutes": LATE_MINUTES + courier + 100}, datetime.now(UTC), FeatureStatus.PRESENT
            )
            await client.hset(
                online_key(spec, (courier,)), "minutes", encode_row(spec, row)["minutes"]
            )
    finally:
        await client.aclose()


async def test_clean_then_injected_skew_is_reported_per_feature(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_BLOB_BACKEND", "s3")
    clean_ids = await predict_all(world)
    await kept(world.registry, MODEL, len(clean_ids))
    first_phase_end = datetime.now(UTC)
    # Events after the first predictions: the batch values at their served time must
    # not include them (a report recomputing "now" instead would find every row skewed).
    late = [
        {
            "courier_id": courier,
            "event_time": datetime.now(UTC).isoformat(),
            "minutes": LATE_MINUTES + courier,
        }
        for courier in COURIERS
    ]
    await produce(world.topic, late)
    await announced(world.topic, EVENTS + len(late))

    clean = await skew_report(
        MODEL,
        until=first_phase_end,
        settle=0,
        registry=world.registry,
        features=world.features,
    )

    assert clean.predictions == len(COURIERS)
    by_feature = {(f.feature, f.model_version): f for f in clean.features}
    assert set(by_feature) == {(MINUTES, 1), (COUNT, 1)}
    for found in by_feature.values():
        assert (found.rows, found.differing) == (len(COURIERS), 0), found
        assert found.max_abs_diff == 0
    assert [ref for ref in clean.notes if ref.endswith("hour")], clean.notes

    second_phase = datetime.now(UTC)
    await corrupt_minutes(CORRUPTED)
    skewed_ids = await predict_all(world)
    await kept(world.registry, MODEL, len(clean_ids) + len(skewed_ids))

    skewed = await skew_report(
        MODEL, since=second_phase, settle=0, registry=world.registry, features=world.features
    )

    assert skewed.predictions == len(COURIERS)
    minutes, count = (
        next(f for f in skewed.features if f.feature == name) for name in (MINUTES, COUNT)
    )
    assert minutes.differing == len(CORRUPTED)
    assert minutes.share == pytest.approx(len(CORRUPTED) / len(COURIERS))
    assert minutes.max_abs_diff == pytest.approx(100.0)
    assert count.differing == 0
    assert [f.feature for f in skewed.skewed()] == [MINUTES]

    monkeypatch.setenv("STRATA_SERVICE_REGISTRY_PORT", world.registry_address.rsplit(":")[1])
    monkeypatch.setenv("STRATA_SERVICE_STREAMER_PORT", world.streamer_address.rsplit(":")[1])
    outputs = await asyncio.to_thread(skew_task, MODEL, since_hours=1, settle=0)
    assert outputs["predictions"] == 2 * len(COURIERS)
    assert outputs["features"] == {f"{MINUTES}@1": len(CORRUPTED) / 12, f"{COUNT}@1": 0.0}
    with pytest.raises(SkewFoundError, match=MINUTES):
        await asyncio.to_thread(skew_task, MODEL, since_hours=1, settle=0, fail_on=0.1)

    code, out, err = await _cli(world, "skew", MODEL, "--settle", "0")
    assert code == 0, err
    assert MINUTES in out
    assert COUNT in out
    code, out, err = await _cli(world, "skew", MODEL, "--settle", "0", "--fail-on", "0.1")
    assert code == 1
    assert MINUTES in err
    code, out, err = await _cli(world, "skew", f"{MODEL}-unknown", "--settle", "0")
    assert code == 0, err
    assert "no recorded prediction" in out


async def _cli(world: World, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "STRATA_BLOB_BACKEND": "s3",
        "STRATA_SERVICE_REGISTRY_PORT": world.registry_address.rsplit(":", 1)[1],
        "STRATA_SERVICE_STREAMER_PORT": world.streamer_address.rsplit(":", 1)[1],
        "COLUMNS": "250",
    }
    return await run_strata(*args, env=env)
