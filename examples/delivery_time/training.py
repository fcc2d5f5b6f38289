"""What the weekly workflow's tasks do: plain functions over the SDK and scikit-learn.

Tasks hand each other small JSON outputs (ids, keys, metrics); the data itself
stays in the blob store: the week's partition, the training set the feature
store builds, the models in the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from project import FEATURES, LABEL, MODEL, REQUEST, WORKFLOW

from strata.api.common.v1.refs_pb2 import FeatureViewRef, PartitionRef, TaskAttemptRef
from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.registry.v1 import registry_pb2 as rpb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.blobs import open_blob_store
from strata.core.settings import BlobSettings, load
from strata.sdk.client import service_channel
from strata.sdk.models import ArtifactFile, log_model
from strata.sdk.workflows import task_context

HOLDOUT = 0.2
"""The latest fifth of the week, by event time, is held out for the comparison."""
INPUTS = (*FEATURES, *REQUEST)
BINDING = rpb.FeatureBinding(input="X", features=[*FEATURES, *(f"request:{c}" for c in REQUEST)])
TRAINING_SET_FILE = "part-0.parquet"


class ChecksumMismatchError(ValueError):
    """The partition's content is not what its DataArrived announced."""


def pull_orders(dataset: str, partition: str, uri: str, checksum: str) -> dict[str, Any]:
    """Check the arrived partition against its announced checksum before anything trains on it."""
    try:
        content = asyncio.run(_blob(uri))
    except Exception as error:
        raise FileNotFoundError(
            f"partition {dataset}/{partition} is missing: {uri} cannot be read ({error})"
        ) from None
    actual = f"sha256:{hashlib.sha256(content).hexdigest()}"
    if actual != checksum:
        raise ChecksumMismatchError(
            f"partition {dataset}/{partition}: announced checksum {checksum}, "
            f"content has {actual}; not training on it"
        )
    rows = pq.read_metadata(io.BytesIO(content)).num_rows
    return {"labels_uri": uri, "rows": rows}


def build_training_set(pull_orders: Mapping[str, Any]) -> dict[str, Any]:
    """The week's orders joined point-in-time with the features the views had then."""
    return asyncio.run(_training_set(str(pull_orders["labels_uri"])))


def train(
    candidate: str,
    build_training_set: Mapping[str, Any],
    dataset: str,
    partition: str,
    checksum: str,
) -> dict[str, Any]:
    """Fit candidate ``linear`` (A) or ``boosting`` (B), score it on the held-out orders,
    and register it with every artifact and its lineage; its version and error."""
    from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]
    from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped]

    table = asyncio.run(_blob(str(build_training_set["uri"])))
    inputs, labels, times = _matrix(pq.read_table(io.BytesIO(table)))
    cut = int(len(labels) * (1 - HOLDOUT))
    model: Any = (
        LinearRegression()
        if candidate == "linear"
        else GradientBoostingRegressor(n_estimators=120, max_depth=3, random_state=0)
    )
    model.fit(inputs[:cut], labels[:cut])
    errors = np.abs(model.predict(inputs[cut:]) - labels[cut:])
    mae = float(errors.mean())
    lineage = asyncio.run(_lineage(build_training_set, dataset, partition, checksum))
    version = asyncio.run(
        log_model(
            model,
            name=MODEL,
            sample=inputs[cut : cut + 20],
            metrics={
                "holdout_mae_minutes": mae,
                "holdout_rows": float(len(errors)),
                "train_rows": float(cut),
            },
            artifacts=[
                _report(candidate, mae, errors, times[cut]),
                _sample(inputs[cut : cut + 50], labels[cut : cut + 50]),
            ],
            curves=[_error_curve(inputs[cut:], errors)],
            lineage=lineage,
            feature_bindings=[BINDING],
            generation=rpb.GenerationCode(
                entry_point=f"workflow:train_{candidate}",
                split=f"by event time: train < {times[cut]} <= held out",
                experiment_count=1,
            ),
            labels={"candidate": candidate, "partition": partition},
            owner="delivery-team",
            task="regression",
            description=f"{candidate} model trained on {dataset}/{partition}",
            request_id=f"{lineage.training_run_id}:{candidate}",
        )
    )
    return {"version": version.version, "mae": round(mae, 4)}


def compare(
    train_linear: Mapping[str, Any], train_boosting: Mapping[str, Any], max_mae_minutes: float
) -> dict[str, Any]:
    """The candidate to deploy: the lower held-out error, if it is within the threshold."""
    a, b = float(train_linear["mae"]), float(train_boosting["mae"])
    best = "a" if a <= b else "b"
    best_mae = min(a, b)
    if best_mae > max_mae_minutes:
        winner = "none"
        reason = (
            f"neither is deployed: A's error {a:.2f} min and B's {b:.2f} min are both above "
            f"the threshold of {max_mae_minutes:.2f} min"
        )
    else:
        winner = best
        name = "A (linear)" if best == "a" else "B (boosting)"
        reason = f"{name} has the lower held-out error: A {a:.2f} min, B {b:.2f} min"
    print(reason)
    return {"winner": winner, "reason": reason, "a_mae": a, "b_mae": b}


def deploy(champion: Mapping[str, Any], challenger: Mapping[str, Any]) -> dict[str, Any]:
    """Point ``champion`` at the winner and ``challenger`` (shadowed) at the other."""
    winner, other = int(champion["version"]), int(challenger["version"])
    asyncio.run(_aliases({"champion": winner, "challenger": other}))
    return {"champion": winner, "challenger": other}


async def _blob(key: str) -> bytes:
    async with open_blob_store(load(BlobSettings)) as blobs:
        return await blobs.get(key)


async def _training_set(labels_uri: str) -> dict[str, Any]:
    async with service_channel("streamer") as channel:
        stub = FeatureServiceStub(channel)
        started = await stub.MaterializeTrainingSet(
            fpb.MaterializeTrainingSetRequest(
                labels_uri=labels_uri,
                event_time_column="event_time",
                features=list(FEATURES),
                request_id=hashlib.sha256(labels_uri.encode()).hexdigest(),
            )
        )
        found = started.training_set
        while found.state not in (
            fpb.TRAINING_SET_STATE_SUCCEEDED,
            fpb.TRAINING_SET_STATE_FAILED,
        ):
            await asyncio.sleep(0.2)
            reply = await stub.GetTrainingSet(
                fpb.GetTrainingSetRequest(training_set_id=found.training_set_id)
            )
            found = reply.training_set
    if found.state == fpb.TRAINING_SET_STATE_FAILED:
        raise RuntimeError(f"training set {found.training_set_id} failed: {found.message}")
    return {
        "training_set_id": found.training_set_id,
        "uri": f"{found.output_uri}/{TRAINING_SET_FILE}",
        "sha256": found.checksum.removeprefix("sha256:"),
        "rows": found.rows_written,
        "feature_views": [{"name": v.name, "version": v.version} for v in found.feature_views],
    }


def _matrix(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Inputs, labels and event times, oldest order first."""
    table = table.sort_by("event_time")
    inputs = np.column_stack(
        [pc.fill_null(table.column(c), 0.0).to_numpy().astype(np.float64) for c in INPUTS]
    )
    return inputs, table.column(LABEL).to_numpy(), table.column("event_time").to_pylist()


async def _lineage(
    training_set: Mapping[str, Any],
    dataset: str,
    partition: str,
    checksum: str,
) -> rpb.Lineage:
    """Where this model comes from: the run and attempts that made it, its data and code.

    The agent tells the task its run, task and attempt (``task_context``); the scheduler
    says which attempts of the upstream tasks made the data, and the workflow its code.
    """
    context = task_context()
    async with service_channel("scheduler") as channel:
        stub = SchedulerServiceStub(channel)
        reply = await stub.GetRun(spb.GetRunRequest(run_id=context.run_id))
        run = reply.run
        workflow = await stub.GetWorkflow(
            spb.GetWorkflowRequest(name=WORKFLOW, version=run.workflow_version)
        )
    contributing = ("pull-orders", "build-training-set", context.task_id)
    return rpb.Lineage(
        training_run_id=context.run_id,
        task_attempts=[
            TaskAttemptRef(
                run_id=context.run_id,
                task_id=t.task_id,
                attempt=context.attempt if t.task_id == context.task_id else max(t.attempt, 1),
            )
            for t in run.tasks
            if t.task_id in contributing
        ],
        dataset_partitions=[PartitionRef(dataset=dataset, partition=partition, checksum=checksum)],
        feature_views=[
            FeatureViewRef(name=v["name"], version=int(v["version"]))
            for v in training_set["feature_views"]
        ],
        training_set_id=str(training_set["training_set_id"]),
        training_set_sha256=str(training_set["sha256"]),
        code_bundle=workflow.workflow.spec.bundle,
    )


def _report(candidate: str, mae: float, errors: np.ndarray, split: Any) -> ArtifactFile:
    lines = [
        f"# Delivery-time model, candidate {candidate}",
        "",
        f"- held-out orders: {len(errors)} (placed from {split})",
        f"- mean absolute error: {mae:.3f} minutes",
        f"- 90th percentile error: {float(np.quantile(errors, 0.9)):.3f} minutes",
        f"- inputs: {', '.join(INPUTS)}",
    ]
    return ArtifactFile(
        "evaluation.md", rpb.ARTIFACT_KIND_REPORT, "\n".join(lines).encode(), "text/markdown"
    )


def _sample(inputs: np.ndarray, labels: np.ndarray) -> ArtifactFile:
    rows = [
        {**dict(zip(INPUTS, map(float, row), strict=True)), LABEL: float(label)}
        for row, label in zip(inputs, labels, strict=True)
    ]
    return ArtifactFile(
        "holdout_sample.json",
        rpb.ARTIFACT_KIND_DATA_SAMPLE,
        json.dumps(rows).encode(),
        "application/json",
    )


def _error_curve(inputs: np.ndarray, errors: np.ndarray) -> rpb.Curve:
    """Mean held-out error by ride distance (whole kilometres)."""
    km = np.floor(inputs[:, INPUTS.index("distance_km")])
    xs = sorted(set(km.tolist()))
    return rpb.Curve(
        name="holdout_error_by_distance",
        x_label="distance (km)",
        y_label="mean absolute error (min)",
        x=xs,
        y=[float(errors[km == x].mean()) for x in xs],
    )


async def _aliases(targets: Mapping[str, int]) -> None:
    async with service_channel("registry") as channel:
        stub = ModelRegistryServiceStub(channel)
        for alias, version in targets.items():
            await stub.SetAlias(rpb.SetAliasRequest(model_name=MODEL, alias=alias, version=version))
