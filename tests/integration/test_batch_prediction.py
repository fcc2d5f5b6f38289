"""``strata predict batch`` on a real registry, streamer and gateway, over the stack's S3.

The world: a view of couriers fed by events on a raw topic (the streamer writes
Redis and lands the same events in the offline store), a request-source view of
trips (``distance_km`` from the ``meters`` a row carries) and a gradient-boosting
model registered with its feature bindings and made champion. A partition of rows
(courier, time, meters, hour) is landed in the blob store and scored in batch; the
same rows go to the gateway's Predict.

The rule that makes batch and online comparable without a clock: every event is a
few minutes old, the windows are an hour long, and the compared rows' time is the
moment just before Predict is called, after every event. At that time and at the
gateway's "now" a moment later, every window holds the same events, so the online
values and the point-in-time ones agree. One more row is timed between two events:
its features are the ones of that time, which the online store no longer holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LocalStack
from service_processes import running
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]
from strata_cli import run_strata
from test_streamer_offline import announced, produce
from topics import topic_with_dead_letters

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.blobs import open_blob_store
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, load
from strata.sdk.models import log_model
from strata.sdk.models.batch import LINEAGE_KEY, predict_batch_sync
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    RequestSource,
    TopicSource,
    Transform,
)
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

BOUND = 90.0
"""Bound on waiting for a process, a load or a job: a guard against hanging."""
TAG = uuid.uuid4().hex[:10]
COURIERS = f"batch_couriers_{TAG}"
TRIPS = f"batch_trips_{TAG}"
MODEL = f"batch-eta-{TAG}"
DATASET = f"batch_orders_{TAG}"
BINDING = [f"{COURIERS}:deliveries", f"{COURIERS}:minutes", f"{TRIPS}:distance_km", "request:hour"]
NO_EVENTS = 99


def couriers() -> FeatureView:
    return FeatureView(
        name=COURIERS,
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            f"raw.{COURIERS}",
            (
                Column("courier_id", ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("minutes", ColumnType.DOUBLE),
            ),
        ),
        features=(
            Feature(
                "deliveries",
                aggregation=Aggregation(AggregationFunction.COUNT, "1h"),
                default=0,
            ),
            Feature("minutes", default=-1.0),
        ),
    )


def trips() -> FeatureView:
    return FeatureView(
        name=TRIPS,
        entities=("courier_id",),
        source=RequestSource(
            (Column("courier_id", ColumnType.INT64), Column("meters", ColumnType.DOUBLE))
        ),
        transforms=(Transform("km", "meters / 1000"),),
        features=(Feature("distance_km", column="km", default=0.0),),
    )


@dataclass
class World:
    predict: PredictionServiceStub
    registry_port: str
    streamer_port: str
    events: list[datetime]
    """The times of courier 1's events, oldest first."""


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("batch")
    auth = load(AuthSettings)
    now = datetime.now(UTC).replace(microsecond=0)
    t1, t2, t3 = now - timedelta(minutes=12), now - timedelta(minutes=8), now - timedelta(minutes=4)
    events = [
        {"courier_id": 1, "event_time": t1.isoformat(), "minutes": 30.0},
        {"courier_id": 1, "event_time": t2.isoformat(), "minutes": 45.0},
        {"courier_id": 1, "event_time": t3.isoformat(), "minutes": 12.0},
        {"courier_id": 2, "event_time": t2.isoformat(), "minutes": 20.0},
        {"courier_id": 3, "event_time": t1.isoformat(), "minutes": 50.0},
        {"courier_id": 3, "event_time": t3.isoformat(), "minutes": 55.0},
    ]
    async with (
        topic_with_dead_letters(f"raw.{COURIERS}") as topic,
        running("registry", folder, STRATA_BLOB_BACKEND="s3") as registry_process,
        running("streamer", folder, STRATA_BLOB_BACKEND="s3") as streamer_process,
        channel(registry_process.address, auth, mode="development") as registry_channel,
        channel(streamer_process.address, auth, mode="development") as streamer_channel,
    ):
        catalog = FeatureServiceStub(streamer_channel)
        for view in (couriers(), trips()):
            await catalog.ApplyFeatureView(fpb.ApplyFeatureViewRequest(spec=view_to_spec(view)))
        await produce(topic, events)
        await announced(topic, len(events))

        registry = ModelRegistryServiceStub(registry_channel)
        rng = np.random.default_rng(11)
        features = rng.uniform([0, 0, 0, 0], [5, 60, 20, 23], size=(300, 4))
        labels = features[:, 0] * 2 + features[:, 1] * 0.5 + features[:, 2] * 3 + features[:, 3]
        model = GradientBoostingRegressor(n_estimators=30, random_state=0).fit(features, labels)
        binding = pb.FeatureBinding(input="X", features=BINDING)
        await log_model(
            model, name=MODEL, sample=features[:20], registry=registry, feature_bindings=[binding]
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
                PredictionServiceStub(gateway_channel),
                registry_process.address.rsplit(":", 1)[1],
                streamer_process.address.rsplit(":", 1)[1],
                [t1, t2, t3],
            )


ROWS = [(1, 2500.0, 8), (2, 12000.0, 17), (3, 700.0, 23), (NO_EVENTS, 5000.0, 12)]


def _row(courier: int, meters: float, hour: int) -> gpb.PredictRow:
    return gpb.PredictRow(
        entity_keys={"courier_id": fpb.Value(int64_value=courier)},
        features={
            "meters": fpb.Value(double_value=meters),
            "hour": fpb.Value(int64_value=hour),
        },
    )


async def _online(world: World, rows: list[tuple[int, float, int]]) -> gpb.PredictResponse:
    """The gateway's answer, once it has loaded the champion (in the background)."""
    request = gpb.PredictRequest(model_name=MODEL, rows=[_row(*row) for row in rows])
    async with asyncio.timeout(BOUND):
        while True:
            try:
                reply: gpb.PredictResponse = await world.predict.Predict(request)
                return reply
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.2)


async def _land(stack: LocalStack, partition: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    async with open_blob_store(stack.blobs) as blobs:
        await blobs.put(f"{DATASET}/{partition}/rows.parquet", sink.getvalue())


def _partition(rows: list[tuple[int, float, int]], times: list[datetime]) -> pa.Table:
    return pa.table(
        {
            "courier_id": pa.array([r[0] for r in rows], pa.int64()),
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "meters": pa.array([r[1] for r in rows], pa.float64()),
            "hour": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


async def _strata(world: World, *args: str, **extra: str) -> tuple[int, str, str]:
    """Run the ``strata`` CLI against the world's services (``extra`` added to its
    environment); exit code, stdout, stderr."""
    env = {
        **os.environ,
        "STRATA_SERVICE_REGISTRY_PORT": world.registry_port,
        "STRATA_SERVICE_STREAMER_PORT": world.streamer_port,
        "STRATA_BLOB_BACKEND": "s3",
        "COLUMNS": "300",
        **extra,
    }
    return await run_strata(*args, env=env)


async def test_batch_predictions_equal_the_gateways_for_the_same_rows_at_the_same_times(
    world: World, local_stack: LocalStack
) -> None:
    at = datetime.now(UTC)
    online = await _online(world, ROWS)
    t1, t2, _ = world.events
    between = t1 + (t2 - t1) / 2
    rows = [*ROWS, (1, 2500.0, 8)]
    await _land(local_stack, "day=1", _partition(rows, [at] * len(ROWS) + [between]))

    code, printed, err = await _strata(
        world, "predict", "batch", f"{MODEL}@champion", DATASET, "day=1"
    )

    assert (code, err) == (0, "")
    key = f"predictions/{MODEL}/v1/{DATASET}/day=1/part-0.parquet"
    async with open_blob_store(local_stack.blobs) as blobs:
        content = await blobs.get(key)
    sha256 = hashlib.sha256(content).hexdigest()
    assert printed.strip() == (
        f"scored 5 rows of {DATASET}/day=1 with {MODEL} version 1: {key} (sha256:{sha256})"
    )
    table = pq.read_table(io.BytesIO(content))
    got = table.to_pylist()
    served = [list(p.outputs["variable"].float_list_value.values) for p in online.predictions]
    assert [r["variable"] for r in got[:4]] == [pytest.approx(v, rel=1e-6) for v in served]
    assert len({r["prediction_id"] for r in got}) == 5
    assert {(r["model_name"], r["model_version"]) for r in got} == {(MODEL, 1)}
    assert [r["event_time"] for r in got] == [at] * 4 + [between]
    # The features as used, worked out by hand from the events: the last row is timed
    # between courier 1's first two events, so it sees the first one only.
    assert [r[BINDING[0]] for r in got] == [3, 1, 2, 0, 1]
    assert [r[BINDING[1]] for r in got] == [12.0, 20.0, 55.0, -1.0, 30.0]
    assert [r[BINDING[2]] for r in got] == [2.5, 12.0, 0.7, 5.0, 2.5]
    assert [r[BINDING[3]] for r in got] == [8, 17, 23, 12, 8]
    assert got[4]["variable"] != got[0]["variable"]
    lineage = json.loads(table.schema.metadata[LINEAGE_KEY])
    assert (lineage["model"], lineage["version"], lineage["partition"]) == (MODEL, 1, "day=1")
    assert list(lineage["files"]) == [f"{DATASET}/day=1/rows.parquet"]
    assert lineage["training_set"]["checksum"].startswith("sha256:")
    assert lineage["feature_views"] == {COURIERS: 1, TRIPS: 1}


async def test_a_workflow_task_scores_a_version_by_number_into_the_key_it_names(
    world: World, local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_SERVICE_REGISTRY_PORT", world.registry_port)
    monkeypatch.setenv("STRATA_SERVICE_STREAMER_PORT", world.streamer_port)
    monkeypatch.setenv("STRATA_BLOB_BACKEND", "s3")
    at = datetime.now(UTC)
    await _land(local_stack, "day=2", _partition(ROWS, [at] * len(ROWS)))
    online = await _online(world, ROWS)
    key = f"scored/{TAG}/day=2.parquet"

    written = await asyncio.to_thread(
        predict_batch_sync, MODEL, DATASET, "day=2", version=1, out=key
    )

    assert (written.model_version, written.rows, written.uri) == (1, len(ROWS), key)
    async with open_blob_store(local_stack.blobs) as blobs:
        content = await blobs.get(key)
    assert hashlib.sha256(content).hexdigest() == written.sha256
    got = pq.read_table(io.BytesIO(content)).column("variable").to_pylist()
    served = [list(p.outputs["variable"].float_list_value.values) for p in online.predictions]
    assert got == [pytest.approx(v, rel=1e-6) for v in served]


async def test_bad_input_is_one_line_naming_what_is_wrong(
    world: World, local_stack: LocalStack
) -> None:
    at = datetime.now(UTC)
    await _land(
        local_stack, "no_meters=1", _partition([(1, 1.0, 1)], [at]).drop_columns(["meters"])
    )
    await _land(
        local_stack, "no_time=1", _partition([(1, 1.0, 1)], [at]).drop_columns(["event_time"])
    )

    cases = {
        ("nope-" + TAG, DATASET, "day=1"): f"'nope-{TAG}'",
        (f"{MODEL}@nobody", DATASET, "no_meters=1"): "'nobody'",
        (MODEL, DATASET, "missing=1"): f"no Parquet file under '{DATASET}/missing=1/'",
        (MODEL, DATASET, "no_meters=1"): "row 0, column 'meters': missing",
        (MODEL, DATASET, "no_time=1"): "no event time column 'event_time'",
    }
    for args, expected in cases.items():
        code, printed, err = await _strata(world, "predict", "batch", *args)
        assert code == 1, printed
        assert len(err.strip().splitlines()) == 1, err
        assert expected in err, err


THREADS_AT_EXIT = """
import atexit
import os
import threading


def _note():
    with open(os.environ["STRATA_TEST_THREADS_AT_EXIT"], "w") as note:
        note.write(" ".join(sorted(thread.name for thread in threading.enumerate())))


atexit.register(_note)
"""
"""A ``sitecustomize`` noting which threads are alive when the interpreter shuts down."""


async def test_a_failed_command_leaves_no_grpc_thread_to_interpreter_shutdown(
    world: World, local_stack: LocalStack, tmp_path: Path
) -> None:
    """A gRPC channel freed during interpreter shutdown stops grpc's asyncio engine (its
    poller thread) mid-finalization: a failed ``predict batch`` once died of SIGABRT so."""
    at = datetime.now(UTC)
    await _land(
        local_stack, "no_meters=2", _partition([(1, 1.0, 1)], [at]).drop_columns(["meters"])
    )
    (tmp_path / "sitecustomize.py").write_text(THREADS_AT_EXIT)
    note = tmp_path / "threads"
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)

    code, _, err = await _strata(
        world,
        *("predict", "batch", MODEL, DATASET, "no_meters=2"),
        PYTHONPATH=path,
        STRATA_TEST_THREADS_AT_EXIT=str(note),
    )

    assert code == 1, err
    assert "row 0, column 'meters': missing" in err
    assert note.read_text() == "MainThread"
