"""Lineage from a prediction: a real registry asking a real scheduler about the training run.

What a team relies on: ``GetPredictionLineage`` (and ``strata lineage``) walks from a
prediction id to the features as served, the model version that answered, the run
and the task attempt that trained it with the node it ran on, its state and
duration, the training set and its sha256, the dataset partitions, the feature
view versions and the code bundle hash; when the scheduler cannot be asked, the
answer still comes, with the attempts as the lineage names them and a note saying
why node and times are missing; an unknown id is one line on stderr and exit 1.

The scheduler's run is driven by the test playing the provisioner and agents
(``scheduler_peer``); the prediction is produced on ``strata.predictions`` as the
gateway produces it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scheduler_peer import (
    TOKENS,
    apply_and_trigger,
    playing_cluster,
    run_until,
    scheduler_client,
    task,
)
from service_processes import free_port, running
from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped]
from strata_cli import run_strata
from test_registry_predictions import kept, log, logged

from strata.api.common.v1.refs_pb2 import (
    BundleRef,
    FeatureViewRef,
    PartitionRef,
    TaskAttemptRef,
)
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, load
from strata.sdk.models import log_model

pytestmark = pytest.mark.integration

SCHEDULER_TOKENS = {
    **TOKENS,
    "registry-token": {"principal": "registry", "roles": ["viewer"]},
}
"""The scheduler's tokens: the test's, and the registry's (a viewer may call GetRun)."""
BUNDLE = "b" * 64
TRAINING_SET_SHA = "c" * 64


@dataclass(frozen=True)
class Trained:
    """A model version trained by a finished run, and a prediction it served."""

    registry_address: str
    registry: ModelRegistryServiceStub
    run_id: str
    attempt: TaskAttemptRef
    version: pb.ModelVersion
    prediction_id: str


@pytest.fixture(scope="module")
async def trained(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trained]:
    folder = tmp_path_factory.mktemp("lineage")
    async with (
        running("scheduler", folder, STRATA_AUTH_TOKENS=json.dumps(SCHEDULER_TOKENS)) as scheduler,
        running(
            "registry",
            folder,
            STRATA_BLOB_BACKEND="s3",
            STRATA_REGISTRY_SCHEDULER=scheduler.address,
            STRATA_AUTH_CLIENT_TOKEN="registry-token",
        ) as registry_process,
        channel(registry_process.address, load(AuthSettings), mode="development") as chan,
        scheduler_client(scheduler.address) as client,
        playing_cluster("lineage-test") as cluster,
    ):
        spec = spb.WorkflowSpec(name=f"train-{uuid.uuid4().hex[:8]}", tasks=[task("train")])
        run = await apply_and_trigger(client, spec)
        request = await cluster.next_request(run.run_id)
        await cluster.start(request.attempt)
        await cluster.finish(request.attempt, {"mae": 3.2})
        await run_until(client, run.run_id, spb.RUN_STATE_SUCCEEDED)

        registry = ModelRegistryServiceStub(chan)
        model = f"eta-{uuid.uuid4().hex[:8]}"
        rows = np.arange(20, dtype=np.float64).reshape(10, 2)
        fitted = LinearRegression().fit(rows, rows[:, 0] * 2 + rows[:, 1])
        version = await log_model(
            fitted,
            name=model,
            sample=rows,
            registry=registry,
            lineage=pb.Lineage(
                training_run_id=run.run_id,
                task_attempts=[request.attempt],
                dataset_partitions=[
                    PartitionRef(dataset="orders", partition="week=2026-47", checksum="sha256:e1")
                ],
                feature_views=[FeatureViewRef(name="couriers", version=3)],
                training_set_id="ts-1",
                training_set_sha256=TRAINING_SET_SHA,
                code_bundle=BundleRef(uri="s3://strata-bundles/bb.tar.gz", sha256=BUNDLE),
            ),
        )
        prediction = logged(model, 7, version=version.version)
        await log([(prediction, datetime.now(UTC))])
        await kept(registry, model, 1)
        yield Trained(
            registry_process.address,
            registry,
            run.run_id,
            request.attempt,
            version,
            prediction.prediction_id,
        )


async def test_the_lineage_of_a_prediction_reaches_the_run_data_views_and_bundle(
    trained: Trained,
) -> None:
    found = await trained.registry.GetPredictionLineage(
        pb.GetPredictionLineageRequest(prediction_id=trained.prediction_id)
    )

    assert found.prediction.prediction_id == trained.prediction_id
    assert found.prediction.entity_key == "courier_id=7"
    assert found.prediction.features["couriers:minutes"].value.double_value == 10.5
    assert found.prediction.outputs["variable"].double_value == 14.0
    lineage = found.model_version.lineage
    assert found.model_version.version == trained.version.version
    assert lineage.training_run_id == trained.run_id
    assert [(p.dataset, p.partition) for p in lineage.dataset_partitions] == [
        ("orders", "week=2026-47")
    ]
    assert [(v.name, v.version) for v in lineage.feature_views] == [("couriers", 3)]
    assert lineage.training_set_sha256 == TRAINING_SET_SHA
    assert lineage.code_bundle.sha256 == BUNDLE
    [attempt] = found.task_attempts
    assert attempt.attempt == trained.attempt
    assert attempt.node_id == "node-1"
    assert attempt.state == "SUCCEEDED"
    assert attempt.HasField("duration")
    assert attempt.finished_at.ToDatetime() >= attempt.started_at.ToDatetime()
    assert found.attempts_note == ""


async def test_without_the_scheduler_the_lineage_says_why_nodes_are_missing(
    trained: Trained, tmp_path: Path
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    async with (
        running("registry", tmp_path, STRATA_REGISTRY_SCHEDULER=nowhere) as registry,
        channel(registry.address, load(AuthSettings), mode="development") as chan,
    ):
        found = await ModelRegistryServiceStub(chan).GetPredictionLineage(
            pb.GetPredictionLineageRequest(prediction_id=trained.prediction_id)
        )

    [attempt] = found.task_attempts
    assert attempt.attempt == trained.attempt
    assert attempt.node_id == ""
    assert nowhere in found.attempts_note
    assert found.model_version.lineage.code_bundle.sha256 == BUNDLE


async def test_strata_lineage_prints_one_tree_from_prediction_to_bundle(trained: Trained) -> None:
    code, out, err = await _cli(trained.registry_address, "lineage", trained.prediction_id)

    assert code == 0, err
    for shown in (
        trained.prediction_id,
        f"version {trained.version.version}",
        trained.run_id,
        "task train attempt 1 on node node-1",
        "SUCCEEDED",
        TRAINING_SET_SHA,
        "orders/week=2026-47",
        "couriers version 3",
        BUNDLE,
        "couriers:minutes = 10.5",
    ):
        assert shown in out, shown


async def test_strata_lineage_of_an_unknown_id_is_one_line_and_exit_1(trained: Trained) -> None:
    unknown = str(uuid.uuid4())

    code, out, err = await _cli(trained.registry_address, "lineage", unknown)

    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert unknown in err
    assert "on its way" in err


async def _cli(registry_address: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "STRATA_SERVICE_REGISTRY_PORT": registry_address.rsplit(":", 1)[1],
        "COLUMNS": "250",
    }
    return await run_strata(*args, env=env)
