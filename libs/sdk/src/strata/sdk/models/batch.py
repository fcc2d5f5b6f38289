"""Batch prediction: one dataset partition scored with a registry version, as Parquet.

``await predict_batch("eta", "orders", "week=0001")`` (or ``predict_batch_sync`` in a
workflow task, or ``strata predict batch``) does what the gateway's Predict does for
each row of the partition, with the features read point in time instead of online:

1. reads the version from the registry (a number, an alias, ``champion`` by default):
   its signature and feature bindings; downloads its ONNX file and checks its sha256;
2. reads the partition: every Parquet file under ``DATASET/PARTITION/`` in the blob
   store (or the prefix ``source`` names), rows holding the entity keys, an event
   time column and the request columns;
3. asks the streamer for a point-in-time training set of the stored features the
   bindings name, with the partition's keys and times as its labels: the streamer's
   batch executor (:mod:`strata.transforms.batch`, the one training sets use) reads
   the offline store, so every value is the one the feature had at the row's time,
   never the online store's current one;
4. builds the input tensors with :func:`strata.transforms.featurize.featurize`, the
   code the gateway runs for Predict (request-time transforms included), so a row
   meets the model as the same tensor online and in batch;
5. runs ONNX Runtime over the whole tensor in slices of ``batch_rows`` rows;
6. writes one Parquet file to the blob store: per row a prediction id, the model's
   name and version, the row's columns (its time among them), the features as used
   (one column per reference) and the outputs; the file's metadata holds the lineage
   (the ONNX sha256, the partition's files and their sha256, the training set and
   its checksum, the feature view versions). The result says where it is and its sha256.

Blob store, registry and streamer are the ones the ``STRATA_*`` settings name; the
blob store must be the streamer's, since the streamer reads the labels from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.blobs import BlobStore, open_blob_store
from strata.core.errors import ConfigError, InvalidArgumentError, StrataError
from strata.core.settings import BlobSettings, load
from strata.sdk.client import CommandError, answer, service_channel
from strata.sdk.features.commands import connect
from strata.sdk.features.training import RESULT_FILE
from strata.sdk.models.registration import _blocking
from strata.transforms.featurize import (
    Array,
    FeaturePlan,
    TensorSpec,
    ViewUse,
    bound_views,
    featurize,
    plan,
)
from strata.transforms.online import OnlineValue
from strata.transforms.spec import value_of, view_from_spec
from strata.transforms.types import FeatureStatus, Scalar

REGISTRY = "strata.registry.v1.ModelRegistryService"
CHAMPION = "champion"
"""The alias scored when neither a version nor an alias is named, as Predict does."""
BATCH_ROWS = 4096
"""Rows per ONNX Runtime run: the tensor of a large partition is scored in slices."""
POLL = 0.2
"""Seconds between looks at the training set job."""
LINEAGE_KEY = b"strata.lineage"
"""The Parquet metadata key holding the lineage of a predictions file (JSON)."""
_TERMINAL = (fpb.TRAINING_SET_STATE_SUCCEEDED, fpb.TRAINING_SET_STATE_FAILED)
_FIELD = re.compile(r"rows\[(?P<row>\d+)\](?:\.\w+\[(?P<column>[^\]]+)\])?")


@dataclass(frozen=True)
class BatchPredictions:
    """What a batch prediction wrote: where, its checksum, and what it came from."""

    model_name: str
    model_version: int
    dataset: str
    partition: str
    rows: int
    uri: str
    """Blob key of the predictions file."""
    sha256: str
    training_set_id: str
    """The point-in-time training set the stored features came from; empty when the
    bindings name no stored feature."""

    def summary(self) -> str:
        return (
            f"scored {self.rows} rows of {self.dataset}/{self.partition} with "
            f"{self.model_name} version {self.model_version}: {self.uri} (sha256:{self.sha256})"
        )


async def predict_batch(
    model: str,
    dataset: str,
    partition: str,
    *,
    version: int = 0,
    alias: str = "",
    out: str = "",
    source: str = "",
    time_column: str = "event_time",
    batch_rows: int = BATCH_ROWS,
) -> BatchPredictions:
    """Score ``dataset``'s ``partition`` with ``model`` (see the module docstring).

    ``version`` or ``alias`` picks the version (``champion`` when neither is given);
    ``out`` is the blob key to write (default
    ``predictions/MODEL/vVERSION/DATASET/PARTITION/part-0.parquet``); ``source`` the
    blob prefix holding the partition's files (default ``DATASET/PARTITION/``).
    Raises :class:`CommandError` naming what is wrong.
    """
    if batch_rows < 1:
        raise CommandError(f"batch_rows must be positive, got {batch_rows}")
    selector = _selector(model, version, alias)
    try:
        async with open_blob_store(load(BlobSettings)) as blobs:
            prefix = source or f"{dataset}/{partition}/"
            rows, files = await _partition(blobs, prefix)
            _check_time(rows, time_column, prefix)
            registry = service_channel(
                "registry", idempotent=(f"{REGISTRY}/GetVersion", f"{REGISTRY}/DownloadArtifact")
            )
            async with registry, connect() as streamer:
                registered, onnx, sha256 = await _version(
                    ModelRegistryServiceStub(registry), selector
                )
                features = FeatureServiceStub(streamer)
                bound = await _plan(features, registered)
                stored, training = await _stored(
                    features, blobs, bound, rows, time_column, f"{dataset}/{partition}"
                )
            scored = await asyncio.to_thread(
                _score, onnx, bound, rows, stored, time_column, batch_rows
            )
            lineage = {
                "model": registered.model_name,
                "version": registered.version,
                "onnx_sha256": sha256,
                "dataset": dataset,
                "partition": partition,
                "files": files,
                "training_set": training,
                "feature_views": {name: use.version for name, use in bound.views.items()},
            }
            table = _with_lineage(scored, registered, lineage)
            key = out or (
                f"predictions/{registered.model_name}/v{registered.version}/"
                f"{dataset}/{partition}/part-0.parquet"
            )
            content = await asyncio.to_thread(_parquet, table)
            info = await blobs.put(key, content)
    except ConfigError:
        raise
    except StrataError as error:
        raise CommandError(f"the blob store: {error}") from None
    return BatchPredictions(
        registered.model_name,
        registered.version,
        dataset,
        partition,
        table.num_rows,
        key,
        info.sha256,
        training.get("id", ""),
    )


predict_batch_sync = _blocking(predict_batch)
predict_batch_sync.__doc__ = """``predict_batch`` as a plain call, for a workflow task."""


def _selector(model: str, version: int, alias: str) -> pb.GetVersionRequest:
    if version and alias:
        raise CommandError(f"model {model!r}: name a version or an alias, not both")
    if version < 0:
        raise CommandError(f"model {model!r}: the version must be positive, got {version}")
    if version:
        return pb.GetVersionRequest(model_name=model, version=version)
    return pb.GetVersionRequest(model_name=model, alias=alias or CHAMPION)


async def _partition(blobs: BlobStore, prefix: str) -> tuple[pa.Table, dict[str, str]]:
    """Every Parquet file under ``prefix``, as one table, and each file's sha256."""
    keys = sorted(k for k in await blobs.list(prefix) if k.endswith(".parquet"))
    if not keys:
        raise CommandError(f"no Parquet file under {prefix!r} in the blob store")
    tables, files = [], {}
    for key in keys:
        content = await blobs.get(key)
        files[key] = hashlib.sha256(content).hexdigest()
        try:
            tables.append(pq.read_table(io.BytesIO(content)))
        except pa.ArrowInvalid as error:
            raise CommandError(f"{key}: not a readable Parquet file: {error}") from None
    try:
        return pa.concat_tables(tables, promote_options="default"), files
    except pa.ArrowInvalid as error:
        raise CommandError(f"{prefix}: the files' columns do not agree: {error}") from None


def _check_time(rows: pa.Table, column: str, prefix: str) -> None:
    if column not in rows.column_names:
        raise CommandError(
            f"{prefix}: no event time column {column!r} (columns: {', '.join(rows.column_names)})"
        )
    if not pa.types.is_timestamp(rows.schema.field(column).type):
        raise CommandError(
            f"{prefix}: column {column!r} is {rows.schema.field(column).type}, expected a timestamp"
        )
    if rows.column(column).null_count:
        raise CommandError(f"{prefix}: column {column!r} has rows without a time")


async def _version(
    registry: ModelRegistryServiceStub, selector: pb.GetVersionRequest
) -> tuple[pb.ModelVersion, bytes, str]:
    """The version, its ONNX file (sha256 checked) and that sha256."""
    which = selector.WhichOneof("selector")
    what = f"model {selector.model_name!r} " + (
        f"version {selector.version}" if which == "version" else f"alias {selector.alias!r}"
    )
    reply: pb.GetVersionResponse = await answer(registry.GetVersion(selector), what, "registry")
    version = reply.model_version
    if not version.feature_bindings:
        raise CommandError(
            f"{what} (version {version.version}) has no feature bindings: nothing says "
            "which features fill its inputs"
        )
    onnx = next((a for a in version.artifacts if a.kind == pb.ARTIFACT_KIND_ONNX_MODEL), None)
    if onnx is None:
        raise CommandError(f"{what} (version {version.version}) has no ONNX model artifact")
    parts: list[bytes] = []
    request = pb.DownloadArtifactRequest(model_name=version.model_name, sha256=onnx.sha256)
    try:
        async for part in registry.DownloadArtifact(request):
            if part.HasField("chunk"):
                parts.append(part.chunk)
    except Exception as error:  # a stream's failure surfaces while iterating
        raise CommandError(f"downloading the ONNX file of {what}: {error}") from None
    data = b"".join(parts)
    actual = hashlib.sha256(data).hexdigest()
    if actual != onnx.sha256:
        raise CommandError(
            f"the ONNX file of {what} has sha256 {actual}, the registry recorded {onnx.sha256}"
        )
    return version, data, onnx.sha256


async def _plan(features: FeatureServiceStub, version: pb.ModelVersion) -> FeaturePlan:
    """The plan of the version's bindings, with the views at the versions its lineage
    names (any other at its current version), as the gateway builds it."""
    bindings = [(b.input, list(b.features)) for b in version.feature_bindings]
    pinned = {ref.name: ref.version for ref in version.lineage.feature_views}
    views: dict[str, ViewUse] = {}
    for name in bound_views(bindings):
        request = fpb.GetFeatureViewRequest(name=name, version=pinned.get(name, 0))
        reply: fpb.GetFeatureViewResponse = await answer(
            features.GetFeatureView(request), f"feature view {name!r}", "streamer"
        )
        try:
            view = view_from_spec(reply.feature_view.spec)
        except InvalidArgumentError as error:
            raise CommandError(f"feature view {name!r} cannot be compiled: {error}") from None
        views[name] = ViewUse(view, reply.feature_view.version)
    inputs = [TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in version.signature.inputs]
    try:
        return plan(bindings, inputs, views)
    except ValueError as error:
        raise CommandError(f"version {version.version}: {error}") from None


async def _stored(
    features: FeatureServiceStub,
    blobs: BlobStore,
    bound: FeaturePlan,
    rows: pa.Table,
    time_column: str,
    what: str,
) -> tuple[dict[str, list[list[OnlineValue]]], dict[str, str]]:
    """The stored features of every row at its time, per view as :func:`featurize` takes
    them, from a point-in-time training set; and that training set's id and checksum."""
    views = bound.online_views
    if not views:
        return {}, {}
    keys = list(dict.fromkeys(k for v in views for k in bound.views[v].view.entities))
    missing = [k for k in keys if k not in rows.column_names]
    if missing:
        raise CommandError(f"{what}: no entity key column {', '.join(map(repr, missing))}")
    labels = rows.select([*keys, time_column])
    content = await asyncio.to_thread(_parquet, labels)
    labels_key = f"labels/{hashlib.sha256(content).hexdigest()}.parquet"
    await blobs.put(labels_key, content)
    refs = [f"{v}:{f}" for v in views for f in bound.features_of(v)]
    request = fpb.MaterializeTrainingSetRequest(
        labels_uri=labels_key,
        event_time_column=time_column,
        features=refs,
        request_id=str(uuid.uuid4()),
    )
    started: fpb.MaterializeTrainingSetResponse = await answer(
        features.MaterializeTrainingSet(request), f"point-in-time features of {what}", "streamer"
    )
    built = await _finished(features, started.training_set)
    if built.state == fpb.TRAINING_SET_STATE_FAILED:
        raise CommandError(
            f"point-in-time features of {what}: training set {built.training_set_id} "
            f"failed: {built.message}"
        )
    result = await blobs.get(f"{built.output_uri}/{RESULT_FILE}")
    if f"sha256:{hashlib.sha256(result).hexdigest()}" != built.checksum:
        raise CommandError(f"training set {built.training_set_id}: the result's checksum differs")
    table = pq.read_table(io.BytesIO(result))
    stored = {
        view: _values([table.column(f"{view}:{f}").to_pylist() for f in bound.features_of(view)])
        for view in views
    }
    return stored, {"id": built.training_set_id, "checksum": built.checksum}


async def _finished(features: FeatureServiceStub, started: fpb.TrainingSet) -> fpb.TrainingSet:
    found = started
    while found.state not in _TERMINAL:
        await asyncio.sleep(POLL)
        request = fpb.GetTrainingSetRequest(training_set_id=found.training_set_id)
        reply: fpb.GetTrainingSetResponse = await answer(
            features.GetTrainingSet(request), "training set progress", "streamer"
        )
        found = reply.training_set
    return found


def _values(columns: Sequence[Sequence[Scalar]]) -> list[list[OnlineValue]]:
    """Columns of one view's features as rows of values; the training set holds the
    view's default where the entity had nothing, so only a null reads as not found."""
    return [
        [
            OnlineValue(v, None, FeatureStatus.NOT_FOUND if v is None else FeatureStatus.PRESENT)
            for v in row
        ]
        for row in zip(*columns, strict=True)
    ]


def _score(
    onnx: bytes,
    bound: FeaturePlan,
    rows: pa.Table,
    stored: Mapping[str, Sequence[Sequence[OnlineValue]]],
    time_column: str,
    batch_rows: int,
) -> pa.Table:
    """The rows with their features as used and the model's outputs (a worker thread)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CommandError(
            "batch prediction runs ONNX Runtime: install the strata-sdk[models] extra"
        ) from None

    requests = _requests(bound, rows, time_column)
    try:
        featurized = featurize(bound, requests, stored)
    except InvalidArgumentError as error:
        raise CommandError(f"{_row_field(error.field)}: {error.message}") from None
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[Array]] = {name: [] for name in names}
    for start in range(0, rows.num_rows, batch_rows):
        feeds = {k: v[start : start + batch_rows] for k, v in featurized.feeds.items()}
        for name, array in zip(names, session.run(names, feeds), strict=True):
            parts[name].append(np.asarray(array))
    result = rows
    for ref in [s.ref for b in bound.inputs for s in b.slots]:
        if ref not in result.column_names:
            values = [served[ref].value for served in featurized.served]
            result = result.append_column(ref, pa.array(values))
    for name in names:
        result = result.append_column(name, _column(np.concatenate(parts[name])))
    return result


def _requests(bound: FeaturePlan, rows: pa.Table, time_column: str) -> list[gpb.PredictRow]:
    """Each row as the Predict row a client would send: the bound views' entity keys
    under ``entity_keys``, every other column (but the time) under ``features``."""
    keys = {key for use in bound.views.values() for key in use.view.entities}
    columns = {name: rows.column(name).to_pylist() for name in rows.column_names}
    requests = []
    for index in range(rows.num_rows):
        row = gpb.PredictRow()
        for name, values in columns.items():
            if name == time_column:
                continue
            target = row.entity_keys if name in keys else row.features
            target[name].CopyFrom(value_of(values[index]))
        requests.append(row)
    return requests


def _row_field(field: str) -> str:
    """A Predict field (``rows[3].features[meters]``) as the partition's row and column."""
    found = _FIELD.fullmatch(field)
    if found is None:
        return field
    row, column = found["row"], found["column"]
    return f"row {row}, column {column!r}" if column else f"row {row}"


def _column(array: Array) -> pa.Array:
    """One output tensor as a column: a scalar per row, or a fixed-size list per row."""
    if array.ndim == 1:
        return pa.array(array)
    width = int(np.prod(array.shape[1:]))
    flat = np.ascontiguousarray(array).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def _with_lineage(
    table: pa.Table, version: pb.ModelVersion, lineage: Mapping[str, object]
) -> pa.Table:
    count = table.num_rows
    ids = pa.array([str(uuid.uuid4()) for _ in range(count)])
    table = table.add_column(0, "prediction_id", ids)
    table = table.add_column(1, "model_name", pa.array([version.model_name] * count))
    table = table.add_column(2, "model_version", pa.array([version.version] * count, pa.int64()))
    metadata = {**(table.schema.metadata or {}), LINEAGE_KEY: json.dumps(lineage).encode()}
    return table.replace_schema_metadata(metadata)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
