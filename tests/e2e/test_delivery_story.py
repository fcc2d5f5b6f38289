"""The delivery-time story, end to end, on the real stack and the six real services.

Two past weeks of orders are on the ``orders`` topic (the streamer has them online
and in its offline copy). Week 1's export lands: the workflow pulls it, builds a
point-in-time training set, trains A (linear) and B (boosting), compares them and
deploys A, the better on a linear week; the gateway answers from it. Then week 2's
export lands, whose bridge only boosting can learn: B becomes champion while a
client keeps predicting, and no request fails. A prediction's online features equal
what the batch path computes for that restaurant at that time. A served prediction's
lineage reaches the week's run, its export partition, the feature view versions and
the code bundle; batch predictions for landed rows equal the gateway's for the same
rows and times; the skew report is clean, and finds an online writer's bug (last in
the module: it corrupts Redis, and puts it back). An export whose checksum does not
match its content fails the run at ``pull-orders``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.registry.v1 import registry_pb2 as rpb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core import kafka, redis
from strata.core.blobs import open_blob_store
from strata.core.envelope import open_envelope
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, BlobSettings, KafkaSettings, RedisSettings, load
from strata.core.topics import PREDICTIONS
from strata.sdk.client import CommandError
from strata.sdk.lineage import prediction_lineage
from strata.sdk.models.batch import predict_batch
from strata.sdk.skew import skew_report
from strata.transforms.online import online_key
from strata.transforms.spec import view_from_spec
from tests.e2e.delivery_platform import (
    ADMIN,
    BOUND,
    Platform,
    landed_offline,
    platform,
    run_for,
    states,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
"""Two runs, each training two models in worker processes: minutes on a loaded machine."""

TASKS = (
    "pull-orders",
    "build-training-set",
    "train-linear",
    "train-boosting",
    "compare",
    "deploy-a",
    "deploy-b",
)
EVERY_KIND = {
    rpb.ARTIFACT_KIND_ONNX_MODEL,
    rpb.ARTIFACT_KIND_REPORT,
    rpb.ARTIFACT_KIND_DATA_SAMPLE,
}

RESTAURANTS = 12
"""The example's restaurants (ids 0 to 11)."""
CORRUPTED = (2, 5, 8)
"""Restaurants whose online preparation times the buggy writer overwrites."""
WINDOW_FIELD = "__window"
"""The online hash field holding a windowed view's events: ``[[time_us, input, ...], ...]``
(:mod:`strata.transforms.online`)."""


@dataclass
class Story:
    platform: Platform
    start: datetime
    """When week 1 begins: two weeks before today's midnight (UTC)."""
    weeks: dict[int, pa.Table]


@pytest.fixture(scope="module")
async def story(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Story]:
    """The platform with two past weeks of orders streamed and landed offline, and week 1's
    export landed and its run ended."""
    async with platform(tmp_path_factory.mktemp("delivery")) as running:
        example = running.example
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=14
        )
        weeks = {n: example.orders.week(n, start + timedelta(days=7 * (n - 1))) for n in (1, 2)}
        async with landed_offline(example.project.ORDERS_TOPIC) as rows:
            for n in (1, 2):
                await example.landing.publish_orders(weeks[n])
            # each of the two views lands its own offline copy of every order
            await rows(2 * sum(w.num_rows for w in weeks.values()))
        await example.landing.land_week(weeks[1], 1)
        yield Story(running, start, weeks)


async def _week_run(story: Story, number: int) -> Any:
    project = story.platform.example.project
    partition = story.platform.example.landing.partition_of(number)
    return await run_for(story.platform.scheduler, project.WORKFLOW, partition)


async def test_week_one_runs_every_step_and_deploys_the_linear_model_alone(story: Story) -> None:
    run = await _week_run(story, 1)

    assert states(run) == {
        **dict.fromkeys(TASKS, "SUCCEEDED"),
        "deploy-b": "SKIPPED",
    }, run
    compare = dict(next(t for t in run.tasks if t.task_id == "compare").outputs)
    assert compare["winner"] == "a"
    assert compare["a_mae"] < compare["b_mae"]


async def test_the_registry_holds_every_artifact_and_the_lineage_of_both_candidates(
    story: Story,
) -> None:
    run = await _week_run(story, 1)
    project = story.platform.example.project
    async with grpc.aio.insecure_channel(story.platform.services["registry"].address) as channel:
        reply = await ModelRegistryServiceStub(channel).ListVersions(
            rpb.ListVersionsRequest(model_name=project.MODEL), metadata=ADMIN
        )
    versions = {v.labels["candidate"]: v for v in reply.model_versions}

    assert set(versions) == {"linear", "boosting"}
    for candidate, version in versions.items():
        assert {a.kind for a in version.artifacts} == EVERY_KIND, candidate
        lineage = version.lineage
        assert lineage.training_run_id == run.run_id
        assert {(a.task_id, a.attempt) for a in lineage.task_attempts} == {
            ("pull-orders", 1),
            ("build-training-set", 1),
            (f"train-{candidate}", 1),
        }
        assert [(p.dataset, p.partition) for p in lineage.dataset_partitions] == [
            (project.WEEKLY_DATASET, "week=0001")
        ]
        assert {v.name for v in lineage.feature_views} == {project.PREP_VIEW, project.LOAD_VIEW}
        assert lineage.training_set_id
        assert len(lineage.training_set_sha256) == 64
        assert len(lineage.code_bundle.sha256) == 64
        # The other kinds a model store keeps: definition, parameters' hyperparameters,
        # signature, dependencies, generation code, experiment artifacts and tags.
        assert version.definition.model_class, candidate
        assert version.params, candidate
        assert [i.name for i in version.signature.inputs] == ["X"], candidate
        assert version.dependencies.python_version, candidate
        assert version.dependencies.packages, candidate
        assert version.generation.framework, candidate
        assert version.generation.split, candidate
        assert version.metrics["holdout_mae_minutes"] > 0
        assert version.curves, candidate
        assert (version.owner, version.task) == ("delivery-team", "regression")
    assert versions["linear"].aliases == ["champion"]
    assert versions["boosting"].aliases == ["challenger"]


async def test_a_served_predictions_lineage_reaches_its_run_partitions_views_and_bundle(
    story: Story,
) -> None:
    """Before week 2 lands: the champion is week 1's linear model."""
    run = await _week_run(story, 1)
    project = story.platform.example.project
    async with grpc.aio.insecure_channel(story.platform.services["gateway"].address) as gateway:
        stub = PredictionServiceStub(gateway)
        await _until_answered(stub, story, "linear")
        reply = await stub.Predict(
            gpb.PredictRequest(model_name=project.MODEL, rows=[_row(4, 2.5)]), metadata=ADMIN
        )
    (prediction,) = reply.predictions
    async with _services(story) as (registry, streamer, scheduler):
        found = await _recorded(registry, prediction.prediction_id)
        views = {
            name: (
                await streamer.GetFeatureView(fpb.GetFeatureViewRequest(name=name))
            ).feature_view.version
            for name in (project.PREP_VIEW, project.LOAD_VIEW)
        }
        workflow = (
            await scheduler.GetWorkflow(
                spb.GetWorkflowRequest(name=project.WORKFLOW, version=run.workflow_version)
            )
        ).workflow
    async with open_blob_store(load(BlobSettings)) as blobs:
        export = await blobs.get(story.platform.example.landing.partition_key("week=0001"))

    lineage = found.model_version.lineage
    assert found.prediction.prediction_id == prediction.prediction_id
    assert found.model_version.version == reply.model_version
    assert lineage.training_run_id == run.run_id
    assert {a.attempt.task_id for a in found.task_attempts} == {
        "pull-orders",
        "build-training-set",
        "train-linear",
    }
    # Each attempt with what its task asked for and what it used at its peak.
    asked = {task.task_id: task.requested for task in run.tasks}
    assert not found.attempts_note
    for attempt in found.task_attempts:
        assert attempt.node_id, attempt
        assert attempt.requested == asked[attempt.attempt.task_id], attempt
        assert attempt.requested.memory_bytes > 0, attempt
        assert attempt.peak_usage.memory_bytes > 0, attempt
    assert [(p.dataset, p.partition, p.checksum) for p in lineage.dataset_partitions] == [
        (project.WEEKLY_DATASET, "week=0001", f"sha256:{hashlib.sha256(export).hexdigest()}")
    ]
    assert {(v.name, v.version) for v in lineage.feature_views} == set(views.items())
    assert lineage.code_bundle.sha256 == workflow.spec.bundle.sha256
    assert len(lineage.code_bundle.sha256) == 64
    assert set(project.FEATURES) <= set(found.prediction.features)


async def test_the_champion_swaps_to_boosting_after_week_two_without_a_failed_request(
    story: Story,
) -> None:
    """A client predicts without pause from before week 2 lands until B answers."""
    await _week_run(story, 1)
    example = story.platform.example
    await example.landing.publish_orders(example.orders.live(24, datetime.now(UTC)))
    gateway = story.platform.services["gateway"].address
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = PredictionServiceStub(channel)
        first = await _until_answered(stub, story, "linear")
        answered: list[int] = []
        failures: list[str] = []
        client = asyncio.create_task(_predict_until_swapped(stub, story, first, answered, failures))
        await example.landing.land_week(story.weeks[2], 2)
        run = await _week_run(story, 2)
        swapped = await _version_of(story, "boosting")
        await asyncio.wait_for(client, BOUND)

    assert states(run)["deploy-b"] == "SUCCEEDED"
    assert states(run)["deploy-a"] == "SKIPPED"
    assert failures == []
    assert answered[0] == first
    switch = answered.index(swapped)
    assert set(answered[:switch]) == {first}
    assert set(answered[switch:]) == {swapped}


async def test_the_features_a_prediction_used_equal_the_batch_value_at_that_time(
    story: Story,
) -> None:
    await _week_run(story, 1)
    example = story.platform.example
    project = example.project
    async with landed_offline(project.ORDERS_TOPIC) as rows:
        live = example.orders.live(24, datetime.now(UTC), seed=1)
        await example.landing.publish_orders(live)
        await rows(2 * live.num_rows)
    request_id = f"skew-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(story.platform.services["gateway"].address) as channel:
        await PredictionServiceStub(channel).Predict(
            gpb.PredictRequest(
                model_name=project.MODEL, rows=[_row(3, 4.2)], request_id=request_id
            ),
            metadata=ADMIN,
        )
    served, at = await _logged(request_id)
    batch = await _batch_features(story, restaurant=3, at=at)

    assert set(project.FEATURES) <= set(served)
    for ref in project.FEATURES:
        assert math.isclose(served[ref], batch[ref], rel_tol=1e-9, abs_tol=1e-9), (ref, at)


async def test_batch_predictions_for_a_partition_equal_the_online_ones_for_its_rows_and_times(
    story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule that makes batch and online comparable: each landed row's time is the time
    the gateway served that row online, after every event the online store holds; the
    point-in-time features at that time are the ones the gateway read then."""
    await _week_run(story, 1)
    project = story.platform.example.project
    rows = [(restaurant, 1.0 + 0.75 * restaurant) for restaurant in range(0, 12, 2)]
    async with grpc.aio.insecure_channel(story.platform.services["gateway"].address) as gateway:
        online = await PredictionServiceStub(gateway).Predict(
            gpb.PredictRequest(model_name=project.MODEL, rows=[_row(*row) for row in rows]),
            metadata=ADMIN,
        )
    async with _services(story) as (registry, _, _):
        served = [await _recorded(registry, p.prediction_id) for p in online.predictions]
    dataset = f"e2e_scored{project.NAMESPACE}"
    partition = f"at={uuid.uuid4().hex[:8]}"
    landed = pa.table(
        {
            "restaurant_id": pa.array([r for r, _ in rows], pa.int64()),
            "event_time": pa.array(
                [s.prediction.served_at.ToDatetime(tzinfo=UTC) for s in served],
                pa.timestamp("us", tz="UTC"),
            ),
            "distance_km": pa.array([d for _, d in rows], pa.float64()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(landed, sink)
    for name, value in story.platform.environment.items():
        monkeypatch.setenv(name, value)
    async with open_blob_store(load(BlobSettings)) as blobs:
        await blobs.put(f"{dataset}/{partition}/rows.parquet", sink.getvalue())
        scored = await predict_batch(
            project.MODEL, dataset, partition, version=online.model_version
        )
        content = await blobs.get(scored.uri)
    batch = pq.read_table(io.BytesIO(content)).to_pylist()

    assert scored.model_version == online.model_version
    assert [r["restaurant_id"] for r in batch] == [r for r, _ in rows]
    for row, prediction, logged in zip(batch, online.predictions, served, strict=True):
        for ref in project.FEATURES:
            assert row[ref] == pytest.approx(_number(logged.prediction.features[ref].value))
        for name, value in prediction.outputs.items():
            assert _numbers(row[name]) == pytest.approx(_numbers(value), rel=1e-6), row


async def test_an_export_whose_checksum_does_not_match_fails_at_pull_naming_both(
    story: Story,
) -> None:
    await _week_run(story, 1)
    example = story.platform.example
    wrong = "sha256:" + "0" * 64
    arrived = await example.landing.land_week(story.weeks[1].slice(0, 100), 3, checksum=wrong)
    run = await _week_run(story, 3)

    found = states(run)
    assert found["pull-orders"] == "FAILED"
    assert {found[t] for t in TASKS[1:]} == {"UPSTREAM_FAILED"}, found
    message = next(t.message for t in run.tasks if t.task_id == "pull-orders")
    assert "week=0003" in message
    assert wrong in message
    async with open_blob_store(load(BlobSettings)) as blobs:
        content = await blobs.get(arrived.uri)
    assert f"sha256:{hashlib.sha256(content).hexdigest()}" in message


def test_neither_candidate_is_deployed_when_both_miss_the_threshold() -> None:
    from tests.e2e.delivery_platform import example_modules

    with example_modules("_unit"):
        import training  # type: ignore[import-not-found]

        decided = training.compare({"mae": 7.5}, {"mae": 9.0}, max_mae_minutes=6.0)
    assert decided["winner"] == "none"
    assert "7.50" in decided["reason"]
    assert "9.00" in decided["reason"]
    assert "6.00" in decided["reason"]


async def test_the_clean_run_shows_no_skew_and_an_online_writers_bug_is_found(
    story: Story,
) -> None:
    """Last of the module: it corrupts online values (and puts them back after)."""
    await _week_run(story, 1)
    example = story.platform.example
    project = example.project
    async with landed_offline(project.ORDERS_TOPIC) as rows:
        live = example.orders.live(24, datetime.now(UTC), seed=2)
        await example.landing.publish_orders(live)
        # every event a prediction below reads is landed: the report may compare at once
        await rows(2 * live.num_rows)
    prep = project.FEATURES[0]
    async with (
        _services(story) as (registry, streamer, _),
        grpc.aio.insecure_channel(story.platform.services["gateway"].address) as gateway,
    ):
        predict = PredictionServiceStub(gateway)
        clean_since = datetime.now(UTC)
        version = await _predict_every_restaurant(predict, registry, story)
        clean = await skew_report(
            project.MODEL,
            since=clean_since,
            until=datetime.now(UTC),
            settle=0,
            registry=registry,
            features=streamer,
        )
        view = view_from_spec(
            (
                await streamer.GetFeatureView(fpb.GetFeatureViewRequest(name=project.PREP_VIEW))
            ).feature_view.spec
        )
        async with _corrupted_prep_minutes(view, CORRUPTED):
            skewed_since = datetime.now(UTC)
            await _predict_every_restaurant(predict, registry, story)
            skewed = await skew_report(
                project.MODEL, since=skewed_since, settle=0, registry=registry, features=streamer
            )

    compared = sorted((f.feature, f.rows) for f in clean.features if f.model_version == version)
    assert compared == [(ref, RESTAURANTS) for ref in sorted(project.FEATURES)], clean
    assert clean.skewed() == (), clean
    found = {f.feature: f for f in skewed.features if f.model_version == version}
    assert found[prep].differing == len(CORRUPTED)
    assert found[prep].share == pytest.approx(len(CORRUPTED) / RESTAURANTS)
    assert found[prep].max_abs_diff == pytest.approx(100.0)
    assert found[project.FEATURES[1]].differing == 0
    assert {f.feature for f in skewed.skewed()} == {prep}


def _row(restaurant: int, distance_km: float) -> gpb.PredictRow:
    return gpb.PredictRow(
        entity_keys={"restaurant_id": fpb.Value(int64_value=restaurant)},
        features={"distance_km": fpb.Value(double_value=distance_km)},
    )


async def _version_of(story: Story, candidate: str) -> int:
    project = story.platform.example.project
    async with grpc.aio.insecure_channel(story.platform.services["registry"].address) as channel:
        reply = await ModelRegistryServiceStub(channel).ListVersions(
            rpb.ListVersionsRequest(model_name=project.MODEL), metadata=ADMIN
        )
    found = [
        v.version
        for v in reply.model_versions
        if v.labels["candidate"] == candidate and "champion" in v.aliases
    ]
    assert found, f"no {candidate} champion: {reply}"
    return int(found[0])


async def _until_answered(stub: PredictionServiceStub, story: Story, candidate: str) -> int:
    """The champion's version once the gateway answers with it (it loads in the background)."""
    wanted = await _version_of(story, candidate)
    async with asyncio.timeout(BOUND):
        while True:
            try:
                reply = await stub.Predict(
                    gpb.PredictRequest(
                        model_name=story.platform.example.project.MODEL, rows=[_row(1, 3.0)]
                    ),
                    metadata=ADMIN,
                )
                if reply.model_version == wanted:
                    return wanted
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)


async def _predict_until_swapped(
    stub: PredictionServiceStub,
    story: Story,
    first: int,
    answered: list[int],
    failures: list[str],
) -> None:
    """Predict one row after another until another version than ``first`` answered a few
    times; every answering version in ``answered``, every failure in ``failures``."""
    model = story.platform.example.project.MODEL
    n = 0
    while sum(version != first for version in answered) < 5:
        n += 1
        try:
            reply = await stub.Predict(
                gpb.PredictRequest(model_name=model, rows=[_row(n % 12, 1.0 + n % 9)]),
                metadata=ADMIN,
            )
            answered.append(reply.model_version)
        except grpc.aio.AioRpcError as error:
            failures.append(f"{error.code()}: {error.details()}")
        await asyncio.sleep(0.02)


async def _logged(request_id: str) -> tuple[dict[str, float], datetime]:
    """The features the gateway logged for the request, and when it logged them."""
    consumer = kafka.consumer(
        load(KafkaSettings), PREDICTIONS.name, group_id=f"e2e-log-{uuid.uuid4().hex[:8]}"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(BOUND):
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = open_envelope(record.value)
                        payload: Any = event.payload
                        if getattr(payload, "request_id", "") == request_id:
                            features = {
                                ref: _number(value.value) for ref, value in payload.features.items()
                            }
                            return features, event.envelope.occurred_at.ToDatetime(tzinfo=UTC)
    finally:
        await consumer.stop()


def _number(value: fpb.Value) -> float:
    kind = value.WhichOneof("kind")
    return float(getattr(value, kind)) if kind in ("int64_value", "double_value") else math.nan


async def _batch_features(story: Story, *, restaurant: int, at: datetime) -> dict[str, float]:
    """The batch path's value of each feature for ``restaurant`` at ``at``."""
    project = story.platform.example.project
    labels = pa.table(
        {
            "restaurant_id": pa.array([restaurant], pa.int64()),
            "event_time": pa.array([at], pa.timestamp("us", tz="UTC")),
        }
    )
    sink = io.BytesIO()
    pq.write_table(labels, sink)
    key = f"e2e/labels/{uuid.uuid4().hex}.parquet"
    async with open_blob_store(load(BlobSettings)) as blobs:
        await blobs.put(key, sink.getvalue())
        async with grpc.aio.insecure_channel(story.platform.services["streamer"].address) as ch:
            stub = FeatureServiceStub(ch)
            started = await stub.MaterializeTrainingSet(
                fpb.MaterializeTrainingSetRequest(
                    labels_uri=key,
                    event_time_column="event_time",
                    features=list(project.FEATURES),
                    request_id=uuid.uuid4().hex,
                ),
                metadata=ADMIN,
            )
            found = started.training_set
            async with asyncio.timeout(BOUND):
                while found.state != fpb.TRAINING_SET_STATE_SUCCEEDED:
                    assert found.state != fpb.TRAINING_SET_STATE_FAILED, found.message
                    await asyncio.sleep(0.2)
                    reply = await stub.GetTrainingSet(
                        fpb.GetTrainingSetRequest(training_set_id=found.training_set_id),
                        metadata=ADMIN,
                    )
                    found = reply.training_set
        content = await blobs.get(f"{found.output_uri}/part-0.parquet")
    row = pq.read_table(io.BytesIO(content)).to_pylist()[0]
    return {ref: float(row[ref]) for ref in project.FEATURES}


@contextlib.asynccontextmanager
async def _services(
    story: Story,
) -> AsyncIterator[tuple[ModelRegistryServiceStub, FeatureServiceStub, SchedulerServiceStub]]:
    """The registry, streamer and scheduler, through channels that send the dev token."""
    auth = load(AuthSettings)
    services = story.platform.services
    async with (
        channel(services["registry"].address, auth, mode="development") as registry,
        channel(services["streamer"].address, auth, mode="development") as streamer,
        channel(services["scheduler"].address, auth, mode="development") as scheduler,
    ):
        yield (
            ModelRegistryServiceStub(registry),
            FeatureServiceStub(streamer),
            SchedulerServiceStub(scheduler),
        )


async def _recorded(
    registry: ModelRegistryServiceStub, prediction_id: str
) -> rpb.GetPredictionLineageResponse:
    """The lineage of a served prediction, once the registry has recorded it (the
    prediction log reaches it asynchronously)."""
    async with asyncio.timeout(BOUND):
        while True:
            try:
                return await prediction_lineage(prediction_id, registry=registry)
            except CommandError:
                await asyncio.sleep(0.2)


async def _predict_every_restaurant(
    predict: PredictionServiceStub, registry: ModelRegistryServiceStub, story: Story
) -> int:
    """One prediction per restaurant, recorded by the registry; the answering version."""
    reply = await predict.Predict(
        gpb.PredictRequest(
            model_name=story.platform.example.project.MODEL,
            rows=[_row(restaurant, 3.0) for restaurant in range(RESTAURANTS)],
        ),
        metadata=ADMIN,
    )
    for prediction in reply.predictions:
        await _recorded(registry, prediction.prediction_id)
    return int(reply.model_version)


@contextlib.asynccontextmanager
async def _corrupted_prep_minutes(view: Any, restaurants: tuple[int, ...]) -> AsyncIterator[None]:
    """While inside: the online window of ``restaurants`` in the preparation-time view holds
    every order's ``prep_minutes`` plus 100, as an online writer with a bug would store it
    (the batch path still reads the true values). Put back as they were on leaving."""
    client = redis.client(load(RedisSettings))
    saved: dict[str, bytes | str] = {}
    try:
        for restaurant in restaurants:
            key = online_key(view, (restaurant,))
            stored = await client.hget(key, WINDOW_FIELD)
            assert stored, f"no online window for restaurant {restaurant}"
            saved[key] = stored
            events = json.loads(stored)
            wrong = [[time, minutes + 100.0] for time, minutes in events]
            await client.hset(key, WINDOW_FIELD, json.dumps(wrong).encode())
        yield
    finally:
        for key, original in saved.items():
            await client.hset(key, WINDOW_FIELD, original)
        await client.aclose()


def _numbers(value: Any) -> list[float]:
    """An output as a list of numbers: a gateway Value or a Parquet cell."""
    if isinstance(value, fpb.Value):
        kind = value.WhichOneof("kind")
        if kind in ("float_list_value", "double_list_value"):
            return [float(v) for v in getattr(value, kind).values]
        return [_number(value)]
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]
