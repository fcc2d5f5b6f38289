"""Strata ``Predict`` over REST (``POST /v1/models/{name}/predict``) on a real gateway,
registry and streamer, with features in the real Redis: the same data plane as gRPC.

A smaller world than test_predict.py's: one dataset-sourced view of couriers whose
online values are written to Redis as the streamer writes them, and a
gradient-boosting model over ``[deliveries, minutes, hour]`` registered with
``log_model`` and its feature bindings. Each property is asked of both edges.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from service_processes import free_port, running
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core import redis
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.settings import DEV_ADMIN_TOKEN, AuthSettings, RedisSettings, load
from strata.sdk.models import log_model
from strata.transforms.definition import Column, DatasetSource, Feature, FeatureView
from strata.transforms.online import write_online
from strata.transforms.spec import view_to_spec
from strata.transforms.streaming import EntityKey, FeatureRow
from strata.transforms.types import ColumnType, FeatureStatus

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for a process or a model load: a guard against hanging."""
TAG = uuid.uuid4().hex[:10]
COURIERS = f"rest_couriers_{TAG}"
MODEL = f"rest-eta-{TAG}"
BINDING = [f"{COURIERS}:deliveries", f"{COURIERS}:minutes", "request:hour"]
STORED = {1: (12, 31.5), 2: (3, 8.0), 3: (40, 55.25)}
"""courier id -> (deliveries, minutes) written to Redis; courier 99 has nothing."""
ROWS = [(1, 8), (2, 17), (3, 23), (99, 12)]
"""(courier id, hour) of the rows asked of both edges."""


def couriers() -> FeatureView:
    return FeatureView(
        name=COURIERS,
        entities=("courier_id",),
        event_time="event_time",
        source=DatasetSource(
            COURIERS,
            (
                Column("courier_id", ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("deliveries", ColumnType.INT64),
                Column("minutes", ColumnType.DOUBLE),
            ),
        ),
        features=(Feature("deliveries", default=0), Feature("minutes", default=-1.0)),
    )


@dataclass
class World:
    predict: PredictionServiceStub
    url: str
    model: GradientBoostingRegressor

    async def rest(self, body: dict[str, Any], model: str = MODEL) -> tuple[int, Any]:
        """POST ``body`` to the model's predict route: the status and the JSON answer."""
        headers = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}
        timeout = aiohttp.ClientTimeout(total=BOUND)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{self.url}/v1/models/{model}/predict", json=body, headers=headers) as r,
        ):
            return r.status, await r.json()


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("rest-predict")
    auth = load(AuthSettings)
    async with (
        running("registry", folder, STRATA_BLOB_BACKEND="s3") as registry_process,
        running("streamer", folder) as streamer_process,
        channel(registry_process.address, auth, mode="development") as registry_channel,
        channel(streamer_process.address, auth, mode="development") as streamer_channel,
    ):
        catalog = FeatureServiceStub(streamer_channel)
        await catalog.ApplyFeatureView(fpb.ApplyFeatureViewRequest(spec=view_to_spec(couriers())))
        event_time = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        rows: dict[EntityKey, FeatureRow] = {
            (courier,): FeatureRow(
                {"deliveries": d, "minutes": m}, event_time, FeatureStatus.PRESENT
            )
            for courier, (d, m) in STORED.items()
        }
        client = redis.client(load(RedisSettings))
        await write_online(client, couriers(), rows)
        await client.aclose()

        registry = ModelRegistryServiceStub(registry_channel)
        features = np.random.default_rng(3).uniform([0, 0, 0], [50, 60, 23], size=(200, 3))
        labels = features[:, 1] * 0.5 + features[:, 0] * 0.1 + features[:, 2]
        model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(features, labels)
        binding = pb.FeatureBinding(input="X", features=BINDING)
        await log_model(
            model, name=MODEL, sample=features[:20], registry=registry, feature_bindings=[binding]
        )
        await registry.SetAlias(pb.SetAliasRequest(model_name=MODEL, alias="champion", version=1))
        http_port = free_port()
        async with (
            running(
                "gateway",
                folder,
                STRATA_GATEWAY_MODELS=json.dumps({MODEL: ["champion"]}),
                STRATA_GATEWAY_REGISTRY=registry_process.address,
                STRATA_GATEWAY_STREAMER=streamer_process.address,
                STRATA_GATEWAY_HTTP_PORT=str(http_port),
            ) as gateway,
            channel(gateway.address, auth, mode="development") as gateway_channel,
        ):
            world = World(
                PredictionServiceStub(gateway_channel), f"http://127.0.0.1:{http_port}", model
            )
            await _until_loaded(world)
            yield world


async def _until_loaded(world: World) -> None:
    """Wait for the gateway to load the champion (it loads in the background)."""
    request = gpb.PredictRequest(model_name=MODEL, rows=[_grpc_row(1, 8)])
    async with asyncio.timeout(BOUND):
        while True:
            try:
                await world.predict.Predict(request)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND or "alias" not in str(error.details()):
                    raise
            await asyncio.sleep(0.2)


def _grpc_row(courier: int, hour: int) -> gpb.PredictRow:
    return gpb.PredictRow(
        entity_keys={"courier_id": fpb.Value(int64_value=courier)},
        features={"hour": fpb.Value(int64_value=hour)},
    )


def _rest_row(courier: Any, hour: Any) -> dict[str, Any]:
    return {"entity_keys": {"courier_id": courier}, "features": {"hour": hour}}


async def test_rest_answers_what_grpc_answers_for_the_same_rows(world: World) -> None:
    by_grpc = await world.predict.Predict(
        gpb.PredictRequest(model_name=MODEL, rows=[_grpc_row(c, h) for c, h in ROWS])
    )
    status, by_rest = await world.rest({"rows": [_rest_row(c, h) for c, h in ROWS]})
    assert status == 200
    assert (by_rest["model_name"], by_rest["model_version"], by_rest["alias"]) == (
        MODEL,
        by_grpc.model_version,
        "champion",
    )
    grpc_outputs = [
        list(p.outputs["variable"].float_list_value.values) for p in by_grpc.predictions
    ]
    rest_outputs = [p["outputs"]["variable"] for p in by_rest["predictions"]]
    assert rest_outputs == grpc_outputs
    ids = [p["prediction_id"] for p in by_rest["predictions"]]
    assert len(set(ids)) == len(ROWS)
    # ...and both are the framework model's answer on the features stored in Redis.
    matrix = [[*STORED.get(c, (0, -1.0)), h] for c, h in ROWS]
    expected = world.model.predict(np.asarray(matrix, dtype=np.float32).astype(np.float64))
    assert [v for (v,) in rest_outputs] == pytest.approx(list(expected), rel=1e-4, abs=1e-4)


async def test_a_pinned_version_answers_over_rest_as_over_grpc(world: World) -> None:
    status, reply = await world.rest({"version": 1, "rows": [_rest_row(2, 9)]})
    assert status == 200
    assert (reply["model_version"], reply["alias"]) == (1, "")


async def test_an_unknown_model_or_alias_is_404_naming_it(world: World) -> None:
    status, reply = await world.rest({"rows": [_rest_row(1, 8)]}, model="no-such-model")
    assert status == 404
    assert "no-such-model" in reply["error"]
    status, reply = await world.rest({"alias": "canary", "rows": [_rest_row(1, 8)]})
    assert status == 404
    assert "'canary'" in reply["error"]
    assert MODEL in reply["error"]


async def test_a_mistyped_key_or_value_is_400_naming_what_grpc_names(world: World) -> None:
    for rest_row, grpc_row in [
        (
            _rest_row("1", 8),
            gpb.PredictRow(
                entity_keys={"courier_id": fpb.Value(string_value="1")},
                features={"hour": fpb.Value(int64_value=8)},
            ),
        ),
        (
            _rest_row(1, "noon"),
            gpb.PredictRow(
                entity_keys={"courier_id": fpb.Value(int64_value=1)},
                features={"hour": fpb.Value(string_value="noon")},
            ),
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.predict.Predict(gpb.PredictRequest(model_name=MODEL, rows=[grpc_row]))
        (field,) = field_violations(caught.value)
        status, reply = await world.rest({"rows": [rest_row]})
        assert status == 400
        assert f"invalid {field}:" in reply["error"]
        assert "int64_value" in reply["error"]
