"""Strata ``Predict`` on a real gateway, registry and streamer, with features in the real Redis.

The world of this module: a feature view of couriers (dataset-sourced, so the
streamer does not stream it) whose online values are written to Redis with the
online library as the streamer writes them; a request-source view of trips whose
``distance_km`` is computed from the ``meters`` a caller sends; a scikit-learn
gradient-boosting model trained on ``[deliveries, minutes, distance_km, hour]`` and
registered with ``log_model`` and its feature bindings. The gateway learns the views
from the streamer's catalog, reads the features itself, and logs every prediction
to ``strata.predictions``, read back here with a consumer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from link import Link
from redis.asyncio import Redis
from service_processes import ServiceProcess, running
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core import kafka, redis
from strata.core.envelope import open_envelope
from strata.core.redis_multiplexed import Command, Meanwhile, MultiplexedConnection
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.settings import AuthSettings, KafkaSettings, RedisSettings, load
from strata.core.topics import PREDICTIONS
from strata.sdk.models import log_model
from strata.transforms.definition import (
    Column,
    DatasetSource,
    Feature,
    FeatureView,
    RequestSource,
    Transform,
)
from strata.transforms.online import (
    OnlineRead,
    read_online,
    read_online_views,
    select,
    write_online,
)
from strata.transforms.spec import view_to_spec
from strata.transforms.streaming import EntityKey, FeatureRow
from strata.transforms.types import ColumnType, FeatureStatus

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for a process, a swap or the log: a guard against hanging."""
TAG = uuid.uuid4().hex[:10]
COURIERS = f"couriers_{TAG}"
TRIPS = f"trips_{TAG}"
MODEL = f"eta-{TAG}"
BINDING = [f"{COURIERS}:deliveries", f"{COURIERS}:minutes", f"{TRIPS}:distance_km", "request:hour"]
STORED = {1: (12, 31.5), 2: (3, 8.0), 3: (40, 55.25)}
"""courier id -> (deliveries, minutes) written to Redis; courier 99 has nothing."""
MISSING = 99
DEFAULTS = (0, -1.0)


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
    oip: GRPCInferenceServiceStub
    registry: ModelRegistryServiceStub
    model: GradientBoostingRegressor
    challenger: GradientBoostingRegressor
    gateway_log: Path
    metrics_port: int
    event_time: datetime
    registry_address: str
    streamer_address: str


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    folder = tmp_path_factory.mktemp("predict")
    auth = load(AuthSettings)
    async with (
        running("registry", folder, STRATA_BLOB_BACKEND="s3") as registry_process,
        running("streamer", folder) as streamer_process,
        channel(registry_process.address, auth, mode="development") as registry_channel,
        channel(streamer_process.address, auth, mode="development") as streamer_channel,
    ):
        catalog = FeatureServiceStub(streamer_channel)
        for view in (couriers(), trips()):
            await catalog.ApplyFeatureView(fpb.ApplyFeatureViewRequest(spec=view_to_spec(view)))
        event_time = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        client = redis.client(load(RedisSettings))
        rows: dict[EntityKey, FeatureRow] = {
            (courier,): FeatureRow(
                {"deliveries": d, "minutes": m}, event_time, FeatureStatus.PRESENT
            )
            for courier, (d, m) in STORED.items()
        }
        await write_online(client, couriers(), rows)
        await client.aclose()

        registry = ModelRegistryServiceStub(registry_channel)
        rng = np.random.default_rng(7)
        features = rng.uniform([0, 0, 0, 0], [50, 60, 20, 23], size=(200, 4))
        labels = features[:, 1] * 0.5 + features[:, 2] * 3 + features[:, 0] * 0.1
        model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(features, labels)
        binding = pb.FeatureBinding(input="X", features=BINDING)
        await log_model(
            model, name=MODEL, sample=features[:20], registry=registry, feature_bindings=[binding]
        )
        challenger = GradientBoostingRegressor(n_estimators=10, random_state=1)
        challenger.fit(features, labels * 2)
        await log_model(
            challenger,
            name=MODEL,
            sample=features[:20],
            registry=registry,
            feature_bindings=[binding],
        )
        await registry.SetAlias(pb.SetAliasRequest(model_name=MODEL, alias="champion", version=1))
        await registry.SetAlias(pb.SetAliasRequest(model_name=MODEL, alias="challenger", version=2))
        async with (
            running(
                "gateway",
                folder,
                STRATA_GATEWAY_MODELS=json.dumps({MODEL: ["champion", "challenger"]}),
                STRATA_GATEWAY_REGISTRY=registry_process.address,
                STRATA_GATEWAY_STREAMER=streamer_process.address,
                # Every run goes to a worker thread, as a model too slow for the event
                # loop's budget does, and calls wait up to 20 ms for company while the
                # model is busy, so the concurrent calls of the batching test surely
                # meet; a lone call never waits. (A model small enough for the loop runs
                # each call at once, unbatched: the default, as the other modules serve.)
                STRATA_GATEWAY_INLINE_BUDGET="0",
                STRATA_GATEWAY_BATCH_WAIT="0.02",
            ) as gateway,
            channel(gateway.address, auth, mode="development") as gateway_channel,
        ):
            yield World(
                PredictionServiceStub(gateway_channel),
                GRPCInferenceServiceStub(gateway_channel),
                registry,
                model,
                challenger,
                gateway.log,
                gateway.metrics_port,
                event_time,
                registry_process.address,
                streamer_process.address,
            )


def _row(courier: int, meters: float, hour: int) -> gpb.PredictRow:
    return gpb.PredictRow(
        entity_keys={"courier_id": fpb.Value(int64_value=courier)},
        features={
            "meters": fpb.Value(double_value=meters),
            "hour": fpb.Value(int64_value=hour),
        },
    )


async def _answer(world: World, request: gpb.PredictRequest) -> gpb.PredictResponse:
    """The answer, once the gateway has loaded the champion (it loads in the background)."""
    return await _answer_from(world.predict, request)


async def _answer_from(
    stub: PredictionServiceStub, request: gpb.PredictRequest
) -> gpb.PredictResponse:
    async with asyncio.timeout(BOUND):
        while True:
            try:
                reply: gpb.PredictResponse = await stub.Predict(request)
                return reply
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND or "alias" not in str(error.details()):
                    raise
            await asyncio.sleep(0.2)


def _expected(
    world: World, rows: Iterable[tuple[int, float, int]], *, challenger: bool = False
) -> list[float]:
    matrix = []
    for courier, meters, hour in rows:
        deliveries, minutes = STORED.get(courier, DEFAULTS)
        matrix.append([deliveries, minutes, meters / 1000, hour])
    # The ONNX graph computes in float32: the framework model is given the same inputs.
    inputs = np.asarray(matrix, dtype=np.float32).astype(np.float64)
    model = world.challenger if challenger else world.model
    return [float(v) for v in model.predict(inputs)]


async def _logged(ids: set[str], *, group: str) -> dict[str, gpb.PredictionLogged]:
    """The log records of ``ids`` from strata.predictions, read from the beginning."""
    consumer = kafka.consumer(load(KafkaSettings), PREDICTIONS.name, group_id=group)
    await consumer.start()
    found: dict[str, gpb.PredictionLogged] = {}
    try:
        async with asyncio.timeout(BOUND):
            while not ids <= set(found):
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        event = open_envelope(record.value)
                        assert isinstance(event.payload, gpb.PredictionLogged)
                        if event.payload.prediction_id in ids:
                            found[event.payload.prediction_id] = event.payload
    finally:
        await consumer.stop()
    return found


ROWS = [(1, 2500.0, 8), (2, 12000.0, 17), (3, 700.0, 23), (MISSING, 5000.0, 12)]


async def test_predict_equals_the_framework_model_on_features_read_from_redis(
    world: World,
) -> None:
    request = gpb.PredictRequest(
        model_name=MODEL, rows=[_row(*row) for row in ROWS], request_id=f"req-{TAG}"
    )
    reply = await _answer(world, request)

    assert (reply.model_name, reply.model_version, reply.alias) == (MODEL, 1, "champion")
    ids = [p.prediction_id for p in reply.predictions]
    assert len(set(ids)) == len(ROWS)
    assert all(uuid.UUID(i) for i in ids)
    got = [list(p.outputs["variable"].float_list_value.values) for p in reply.predictions]
    assert [len(v) for v in got] == [1] * len(ROWS)
    assert [v[0] for v in got] == pytest.approx(_expected(world, ROWS), rel=1e-4, abs=1e-4)


async def test_the_log_holds_every_prediction_with_its_features_as_served(world: World) -> None:
    request = gpb.PredictRequest(
        model_name=MODEL, rows=[_row(*row) for row in ROWS], request_id=f"log-{TAG}"
    )
    reply = await _answer(world, request)
    ids = [p.prediction_id for p in reply.predictions]

    logged = await _logged(set(ids), group=f"test-log-{uuid.uuid4().hex[:8]}")

    present = fpb.FEATURE_STATUS_PRESENT
    for prediction, (courier, meters, hour) in zip(reply.predictions, ROWS, strict=True):
        record = logged[prediction.prediction_id]
        assert (record.model_name, record.model_version, record.alias) == (MODEL, 1, "champion")
        assert record.request_id == f"log-{TAG}"
        assert record.entity_key == f"courier_id={courier}"
        assert dict(record.outputs) == dict(prediction.outputs)
        assert record.latency.ToNanoseconds() > 0
        assert {(v.name, v.version) for v in record.feature_views} == {(COURIERS, 1), (TRIPS, 1)}
        features = record.features
        assert set(features) == set(BINDING)
        deliveries, minutes = features[BINDING[0]], features[BINDING[1]]
        if courier == MISSING:
            # No features yet: served with the declared defaults, and the log says so.
            assert (deliveries.value.int64_value, minutes.value.double_value) == DEFAULTS
            assert deliveries.status == minutes.status == fpb.FEATURE_STATUS_NOT_FOUND
            assert not deliveries.HasField("event_time")
        else:
            stored = STORED[courier]
            assert (deliveries.value.int64_value, minutes.value.double_value) == stored
            assert deliveries.status == minutes.status == present
            assert deliveries.event_time.ToDatetime(tzinfo=UTC) == world.event_time
        assert features[BINDING[2]].value.double_value == pytest.approx(meters / 1000)
        assert features[BINDING[3]].value.int64_value == hour
        assert features[BINDING[2]].status == features[BINDING[3]].status == present


async def test_a_value_sent_under_a_features_reference_replaces_the_stored_one(
    world: World,
) -> None:
    row = _row(1, 2500.0, 8)
    row.features[BINDING[1]].double_value = 2.0
    reply = await _answer(world, gpb.PredictRequest(model_name=MODEL, rows=[row]))
    deliveries = STORED[1][0]
    expected = world.model.predict(np.asarray([[deliveries, 2.0, 2.5, 8]], dtype=np.float32))
    value = reply.predictions[0].outputs["variable"].float_list_value.values[0]
    assert value == pytest.approx(float(expected[0]), rel=1e-4, abs=1e-4)


async def _refusal(world: World, request: gpb.PredictRequest) -> grpc.aio.AioRpcError:
    await _answer(world, gpb.PredictRequest(model_name=MODEL, rows=[_row(1, 1.0, 1)]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.predict.Predict(request)
    return caught.value


async def test_an_unknown_model_or_alias_is_not_found_by_name(world: World) -> None:
    rows = [_row(1, 1.0, 1)]
    error = await _refusal(world, gpb.PredictRequest(model_name="no-such-model", rows=rows))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in str(error.details())

    error = await _refusal(world, gpb.PredictRequest(model_name=MODEL, alias="canary", rows=rows))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'canary'" in str(error.details())
    assert MODEL in str(error.details())


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        (lambda r: r.entity_keys.pop("courier_id"), "rows[0].entity_keys[courier_id]", "int64"),
        (
            lambda r: r.entity_keys["courier_id"].CopyFrom(fpb.Value(string_value="1")),
            "rows[0].entity_keys[courier_id]",
            "int64_value",
        ),
        (lambda r: r.features.pop("meters"), "rows[0].features[meters]", "double_value"),
        (
            lambda r: r.features["meters"].CopyFrom(fpb.Value(string_value="far")),
            "rows[0].features[meters]",
            "double_value",
        ),
        (lambda r: r.features.pop("hour"), "rows[0].features[hour]", "int64_value"),
        (
            lambda r: r.features["hour"].CopyFrom(fpb.Value(string_value="noon")),
            "rows[0].features[hour]",
            "int64_value",
        ),
    ],
)
async def test_a_missing_or_mistyped_key_or_value_is_refused_naming_the_column_and_type(
    world: World, change: object, field: str, expected: str
) -> None:
    row = _row(1, 2500.0, 8)
    assert callable(change)
    change(row)
    error = await _refusal(world, gpb.PredictRequest(model_name=MODEL, rows=[row]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error)
    assert expected in str(error.details())


async def test_predictions_continue_while_kafka_is_stopped_and_the_log_catches_up(
    world: World,
) -> None:
    """Kafka is paused (SIGSTOP) rather than cut with a TCP link: the broker advertises
    its own address, so after the first metadata answer a client no longer goes
    through a link. A paused broker answers nothing, as a dead one; it is resumed in
    ``finally`` whatever happens."""
    await _answer(world, gpb.PredictRequest(model_name=MODEL, rows=[_row(1, 1.0, 1)]))
    pid = int((Path(os.environ["STRATA_STACK_HOME"]) / "kafka" / "kafka.pid").read_text())
    ids: list[str] = []
    failures: list[str] = []

    async def load(count: int) -> None:
        for i in range(count):
            request = gpb.PredictRequest(model_name=MODEL, rows=[_row(1 + i % 3, 100.0 * i, 9)])
            try:
                reply = await world.predict.Predict(request, timeout=10.0)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
                return
            ids.extend(p.prediction_id for p in reply.predictions)

    await load(20)
    os.kill(pid, signal.SIGSTOP)
    try:
        await load(100)
        await _until_metric(world, "strata_gateway_prediction_log_buffered", lambda v: v > 0)
    finally:
        os.kill(pid, signal.SIGCONT)
    await load(20)

    assert failures == []
    assert len(ids) == 140
    logged = await _logged(set(ids), group=f"test-outage-{uuid.uuid4().hex[:8]}")
    assert set(logged) == set(ids)


async def test_a_prediction_too_large_for_kafka_is_dropped_from_the_log_not_the_rest(
    world: World,
) -> None:
    """A request id of 1.5 MB makes its prediction's record larger than Kafka takes (1 MB
    by default): the call is answered, the record is dropped and counted, and the
    predictions after it still reach the log."""
    dropped = "strata_gateway_predictions_dropped_total"
    before = await _until_metric(world, dropped, lambda value: value >= 0)
    huge = gpb.PredictRequest(model_name=MODEL, request_id="x" * 1_500_000, rows=[_row(1, 1.0, 1)])
    refused = await _answer(world, huge)
    after = await _answer(world, gpb.PredictRequest(model_name=MODEL, rows=[_row(2, 1.0, 1)]))

    (later,) = [p.prediction_id for p in after.predictions]
    assert set(await _logged({later}, group=f"test-huge-{uuid.uuid4().hex[:8]}")) == {later}
    assert await _until_metric(world, dropped, lambda value: value >= before + 1) == before + 1
    (dropped_id,) = [p.prediction_id for p in refused.predictions]
    warned = [line for line in world.gateway_log.read_text().splitlines() if dropped_id in line]
    assert len(warned) == 1
    assert "too large for Kafka" in warned[0]


@asynccontextmanager
async def _champion_gateway(
    world: World, folder: Path, **env: str
) -> AsyncIterator[tuple[ServiceProcess, PredictionServiceStub]]:
    """A gateway of the test's own, with ``env``, serving the champion of the world's
    model, and a stub on it."""
    async with (
        running(
            "gateway",
            folder,
            STRATA_GATEWAY_MODELS=json.dumps({MODEL: ["champion"]}),
            STRATA_GATEWAY_REGISTRY=world.registry_address,
            STRATA_GATEWAY_STREAMER=world.streamer_address,
            **env,
        ) as gateway,
        channel(gateway.address, load(AuthSettings), mode="development") as gateway_channel,
    ):
        yield gateway, PredictionServiceStub(gateway_channel)


async def test_predictions_buffered_at_sigterm_are_flushed_to_the_log_before_exit(
    world: World, tmp_path: Path
) -> None:
    """Kafka is paused while a gateway of this test answers, so its log stays in the
    buffer (batches of 5, most never started); the gateway is SIGTERMed with the
    records unsent, and Kafka resumes only once the gateway is stopping: every
    prediction reaches the log only if the shutdown flushes it."""
    kafka_pid = int((Path(os.environ["STRATA_STACK_HOME"]) / "kafka" / "kafka.pid").read_text())
    ids: list[str] = []
    async with _champion_gateway(
        world, tmp_path, STRATA_GATEWAY_LOG_BATCH="5", STRATA_SERVICE_SHUTDOWN_GRACE="20"
    ) as (gateway, stub):
        probe = gpb.PredictRequest(model_name=MODEL, rows=[_row(1, 1.0, 1)])
        ids.extend(p.prediction_id for p in (await _answer_from(stub, probe)).predictions)
        os.kill(kafka_pid, signal.SIGSTOP)
        try:
            for i in range(40):
                request = gpb.PredictRequest(model_name=MODEL, rows=[_row(1 + i % 3, 10.0 * i, 7)])
                reply = await stub.Predict(request, timeout=10.0)
                ids.extend(p.prediction_id for p in reply.predictions)
            gateway.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(BOUND):
                await _until_logged(gateway.log, '"event": "stopping"')
        finally:
            os.kill(kafka_pid, signal.SIGCONT)
        async with asyncio.timeout(BOUND):
            await gateway.process.wait()

    assert len(ids) == 41
    logged = await _logged(set(ids), group=f"test-sigterm-{uuid.uuid4().hex[:8]}")
    assert set(logged) == set(ids)
    assert "predictions not logged at shutdown" not in gateway.log.read_text()


async def test_redis_gone_answers_unavailable_naming_it_and_redis_back_serves_again(
    world: World, tmp_path: Path
) -> None:
    """The gateway reads features through a link to the real Redis that the test cuts:
    Predict fails UNAVAILABLE naming Redis (not INTERNAL, not a hang), and the next
    call after the link is back reconnects and answers."""
    settings = load(RedisSettings)
    link = Link(settings.host, settings.port)
    await link.up()
    request = gpb.PredictRequest(model_name=MODEL, rows=[_row(1, 1.0, 1)])
    redis_at = {"STRATA_REDIS_HOST": "127.0.0.1", "STRATA_REDIS_PORT": str(link.port)}
    try:
        async with _champion_gateway(world, tmp_path, **redis_at) as (_, stub):
            before = await _answer_from(stub, request)
            await link.cut()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Predict(request, timeout=10.0)
            await link.up()
            after = await _answer_from(stub, request)
    finally:
        await link.cut()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"Redis is not reachable at 127.0.0.1:{link.port}" in str(caught.value.details())
    assert after.predictions[0].outputs == before.predictions[0].outputs


async def test_concurrent_predict_and_model_infer_calls_are_batched_each_with_its_answer(
    world: World,
) -> None:
    await _answer(world, gpb.PredictRequest(model_name=MODEL, rows=[_row(1, 1.0, 1)]))
    runs = f'strata_gateway_session_runs_total{{model="{MODEL}",version="1"}}'
    calls = f'strata_gateway_batched_calls_total{{model="{MODEL}",version="1"}}'
    runs_before = await _until_metric(world, runs, lambda v: v > 0)
    calls_before = await _until_metric(world, calls, lambda v: v > 0)
    wrong: list[str] = []

    async def client(k: int) -> None:
        for i in range(10):
            courier, meters, hour = 1 + (k + i) % 3, 100.0 * (k * 10 + i), (k + i) % 24
            (expected,) = _expected(world, [(courier, meters, hour)])
            if i % 2:
                request = gpb.PredictRequest(model_name=MODEL, rows=[_row(courier, meters, hour)])
                reply = await world.predict.Predict(request)
                got = reply.predictions[0].outputs["variable"].float_list_value.values[0]
            else:
                deliveries, minutes = STORED[courier]
                x = [float(deliveries), minutes, meters / 1000, float(hour)]
                tensor = oip.ModelInferRequest.InferInputTensor(
                    name="X", datatype="FP32", shape=[1, 4]
                )
                tensor.contents.fp32_contents.extend(x)
                answer = await world.oip.ModelInfer(
                    oip.ModelInferRequest(model_name=MODEL, inputs=[tensor])
                )
                got = answer.outputs[0].contents.fp32_contents[0]
            if got != pytest.approx(expected, rel=1e-4, abs=1e-4):
                wrong.append(f"client {k} call {i}: {got} != {expected}")

    async with asyncio.timeout(BOUND):
        await asyncio.gather(*(client(k) for k in range(8)))

    assert wrong == []
    served = await _until_metric(world, calls, lambda v: v >= calls_before + 80)
    ran = await _until_metric(world, runs, lambda v: v > runs_before)
    assert served - calls_before == 80
    assert ran - runs_before < 80, "concurrent calls shared ONNX Runtime runs"


async def test_the_challengers_answers_are_logged_beside_the_champions_and_never_returned(
    world: World,
) -> None:
    rows = [_row(*row) for row in ROWS]
    champion = _expected(world, ROWS)
    async with asyncio.timeout(BOUND):
        while True:  # until the challenger is loaded: it loads in the background too
            reply = await _answer(world, gpb.PredictRequest(model_name=MODEL, rows=rows))
            assert (reply.model_version, reply.alias) == (1, "champion")
            got = [p.outputs["variable"].float_list_value.values[0] for p in reply.predictions]
            assert got == pytest.approx(champion, rel=1e-4, abs=1e-4)
            assert {name for p in reply.predictions for name in p.outputs} == {"variable"}
            ids = {p.prediction_id for p in reply.predictions}
            logged = await _logged(ids, group=f"test-shadow-{uuid.uuid4().hex[:8]}")
            if all(record.shadows for record in logged.values()):
                break
            await asyncio.sleep(0.2)
    pinned = await world.predict.Predict(gpb.PredictRequest(model_name=MODEL, version=1, rows=rows))

    challenger = _expected(world, ROWS, challenger=True)
    assert challenger != pytest.approx(champion, rel=1e-2), "the two models differ"
    for prediction, expected in zip(reply.predictions, challenger, strict=True):
        record = logged[prediction.prediction_id]
        assert dict(record.outputs) == dict(prediction.outputs), "the champion's answer"
        (shadow,) = record.shadows
        assert (shadow.alias, shadow.model_version, shadow.error) == ("challenger", 2, "")
        value = shadow.outputs["variable"].float_list_value.values[0]
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert shadow.latency.ToNanoseconds() > 0
    pinned_ids = {p.prediction_id for p in pinned.predictions}
    pinned_logged = await _logged(pinned_ids, group=f"test-pinned-{uuid.uuid4().hex[:8]}")
    assert [list(r.shadows) for r in pinned_logged.values()] == [[]] * len(ROWS)


class CountingReads(MultiplexedConnection):
    """The real multiplexed connection to the real Redis, counting its calls (each call is one
    write of all its commands and one wait for their replies: one round trip)."""

    calls = 0

    async def execute(self, *commands: Command, meanwhile: Meanwhile | None = None) -> list[Any]:
        CountingReads.calls += 1
        return await super().execute(*commands, meanwhile=meanwhile)


async def test_the_features_of_every_view_and_row_come_in_one_round_trip(online: Redis) -> None:
    connection = CountingReads(load(RedisSettings))
    other = FeatureView(
        name=f"stores_{TAG}",
        entities=("store_id",),
        event_time="event_time",
        source=DatasetSource(
            f"stores_{TAG}",
            (
                Column("store_id", ColumnType.STRING),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("size", ColumnType.DOUBLE),
            ),
        ),
        features=(Feature("size", default=0.0),),
    )
    now = datetime.now(UTC)
    present = FeatureStatus.PRESENT
    courier_rows: dict[EntityKey, FeatureRow] = {
        (c,): FeatureRow({"deliveries": c, "minutes": 1.0}, now, present) for c in (1, 2)
    }
    store_rows: dict[EntityKey, FeatureRow] = {("a",): FeatureRow({"size": 9.5}, now, present)}
    try:
        await write_online(online, couriers(), courier_rows)
        await write_online(online, other, store_rows)
        CountingReads.calls = 0
        views = [
            OnlineRead(select(couriers(), ["minutes", "deliveries"]), [(1,), (2,), (3,)]),
            OnlineRead(select(other, ["size"]), [("a",), ("b",), ("a",)]),
        ]
        together = await read_online_views(connection, views, now)
        assert CountingReads.calls == 1
        apart = [await read_online(connection, r.view, r.entities, r.features, now) for r in views]
    finally:
        await connection.aclose()
    assert together == apart
    assert [[v.value for v in row] for row in together[1]] == [[9.5], [0.0], [9.5]]


async def _until_logged(log: Path, event: str) -> None:
    """Return once ``event`` appears in the service's ``log``."""
    while True:
        if event in await asyncio.to_thread(log.read_text):
            return
        await asyncio.sleep(0.05)


async def _until_metric(world: World, name: str, check: object) -> float:
    assert callable(check)
    url = f"http://127.0.0.1:{world.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, asyncio.timeout(BOUND):
        while True:
            async with session.get(url) as reply:
                text = await reply.text()
            for line in text.splitlines():
                if line.startswith(name + " ") and check(float(line.split()[-1])):
                    return float(line.split()[-1])
            await asyncio.sleep(0.1)
