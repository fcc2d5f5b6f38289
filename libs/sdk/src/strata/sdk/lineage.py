"""``strata lineage <prediction-id>``: where one served prediction came from, in one answer.

The registry answers ``GetPredictionLineage`` from the prediction log it keeps: the
prediction as served, the model version that answered with its lineage, and the
task attempts of the training run (node and times from the scheduler). This module
asks and draws the answer as one tree, in the order a reader walks back from the
prediction: model version, training run and its attempts, training set and its
sha256, dataset partitions, feature view versions, code bundle, and last the
features as the gateway served them.

For programs (the demo's report): :func:`prediction_lineage` returns the answer,
:func:`lineage_tree` draws it. An unknown id is a :class:`CommandError` saying so
in one line (the command exits 1).
"""

from __future__ import annotations

from datetime import UTC

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.tree import Tree

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.sdk.client import CommandError, answer, service_channel
from strata.sdk.features.values import show_value

REGISTRY = "strata.registry.v1.ModelRegistryService"
_STATUS = {1: "present", 2: "not found", 3: "expired"}


async def prediction_lineage(
    prediction_id: str, *, registry: ModelRegistryServiceStub | None = None
) -> pb.GetPredictionLineageResponse:
    """The lineage of ``prediction_id``; ``registry`` defaults to the one the settings name.

    Raises :class:`CommandError` with one line when the registry does not hold the
    prediction (it may still be on its way: the log is asynchronous), refuses the
    id, or cannot be reached.
    """
    request = pb.GetPredictionLineageRequest(prediction_id=prediction_id)
    what = "lineage"
    if registry is not None:
        return await answer(registry.GetPredictionLineage(request), what, "registry")
    async with _channel() as chan:
        stub = ModelRegistryServiceStub(chan)
        return await answer(stub.GetPredictionLineage(request), what, "registry")


async def show(prediction_id: str, out: Console) -> None:
    """Print the lineage of ``prediction_id`` as one tree."""
    out.print(lineage_tree(await prediction_lineage(prediction_id)))


def lineage_tree(found: pb.GetPredictionLineageResponse) -> Tree:
    """The answer as a tree: prediction -> model version -> run and attempts -> training
    set -> partitions -> feature views -> code bundle -> features as served."""
    prediction, version = found.prediction, found.model_version
    lineage = version.lineage
    reached = f" through {prediction.alias!r}" if prediction.alias else ""
    tree = Tree(
        f"[bold]prediction {prediction.prediction_id}[/bold], served {_time(prediction.served_at)}"
        f" for {prediction.entity_key or 'a request without entity'}"
    )
    outputs = ", ".join(f"{k} = {show_value(v)}" for k, v in sorted(prediction.outputs.items()))
    tree.add(f"outputs: {outputs or '-'}")
    model = tree.add(
        f"model [bold]{version.model_name}[/bold] version {version.version}{reached}, "
        f"registered {_time(version.created_at)} by {version.created_by or '-'}"
    )
    run = model.add(f"training run {lineage.training_run_id or '- (none recorded)'}")
    for attempt in found.task_attempts:
        run.add(_attempt(attempt))
    if found.attempts_note:
        run.add(f"[yellow]{found.attempts_note}[/yellow]")
    training_set = model.add(
        f"training set {lineage.training_set_id or '-'}, "
        f"sha256 {lineage.training_set_sha256 or '-'}"
    )
    partitions = training_set.add(f"dataset partitions ({len(lineage.dataset_partitions)})")
    for part in lineage.dataset_partitions:
        partitions.add(f"{part.dataset}/{part.partition}, checksum {part.checksum or '-'}")
    views = training_set.add(f"feature views ({len(lineage.feature_views)})")
    for view in lineage.feature_views:
        views.add(f"{view.name} version {view.version}")
    bundle = lineage.code_bundle
    model.add(
        f"code bundle sha256 {bundle.sha256 or '-'}" + (f" ({bundle.uri})" if bundle.uri else "")
    )
    served_views = ", ".join(f"{v.name} v{v.version}" for v in prediction.feature_views)
    features = tree.add(f"features as served (views: {served_views or '-'})")
    for ref, value in sorted(prediction.features.items()):
        status = _STATUS.get(value.status, "")
        when = f", event time {_time(value.event_time)}" if value.HasField("event_time") else ""
        features.add(f"{ref} = {show_value(value.value)} ({status or 'request'}{when})")
    return tree


def _attempt(attempt: pb.TaskAttempt) -> str:
    ref = attempt.attempt
    line = f"task {ref.task_id} attempt {ref.attempt}"
    if attempt.node_id:
        line += f" on node {attempt.node_id}"
    if attempt.HasField("duration"):
        line += f", {_seconds(attempt.duration)}"
    if attempt.state:
        line += f", {attempt.state}"
    if attempt.HasField("peak_usage"):
        peak = attempt.peak_usage
        line += f", peak {_gib(peak.memory_bytes)} memory, {peak.cpu_millis / 1000:g} CPU"
        if attempt.HasField("requested"):
            line += f" (asked {_gib(attempt.requested.memory_bytes)}"
            if attempt.HasField("reserved"):
                line += f", reserved {_gib(attempt.reserved.memory_bytes)}"
            line += ")"
    return line


def _gib(amount: int) -> str:
    return f"{amount / 2**30:.2f} GiB"


def _seconds(duration: Duration) -> str:
    return f"{duration.ToTimedelta().total_seconds():.1f} s"


def _time(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds") if stamp.seconds else "-"


def _channel() -> grpc.aio.Channel:
    return service_channel("registry", idempotent=(f"{REGISTRY}/GetPredictionLineage",))


__all__ = ["CommandError", "lineage_tree", "prediction_lineage", "show"]
