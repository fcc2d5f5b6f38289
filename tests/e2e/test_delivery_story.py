"""The delivery-time story, end to end, on the real stack and the six real services.

Two past weeks of orders are on the ``orders`` topic (the streamer has them online
and in its offline copy). Week 1's export lands: the workflow pulls it, builds a
point-in-time training set, trains A (linear) and B (boosting), compares them and
deploys A, the better on a linear week; the gateway answers from it. Then week 2's
export lands, whose bridge only boosting can learn: B becomes champion while a
client keeps predicting, and no request fails. A prediction's online features equal
what the batch path computes for that restaurant at that time; an export whose
checksum does not match its content fails the run at ``pull-orders``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
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
from strata.core import kafka
from strata.core.blobs import open_blob_store
from strata.core.envelope import open_envelope
from strata.core.settings import BlobSettings, KafkaSettings, load
from strata.core.topics import PREDICTIONS
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
        assert version.metrics["holdout_mae_minutes"] > 0
    assert versions["linear"].aliases == ["champion"]
    assert versions["boosting"].aliases == ["challenger"]


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
