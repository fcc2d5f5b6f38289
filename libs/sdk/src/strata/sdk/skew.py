"""Skew you can see: the features a model was served, recomputed by the batch path.

:func:`skew_report` reads the model's predictions the registry keeps
(``ListPredictions``), builds one label file per feature view from them (each
prediction's entity keys, with its served time as the label time) and asks the
streamer for a point-in-time training set over that view (the batch path, the same
definition the stream used online). Each feature as served is then compared with
its batch value for the same entity at the same time, per feature and per model
version: rows compared, the share that differ, and the largest and mean absolute
difference. ``strata skew MODEL`` prints it as a table; :func:`skew_task` is the
form a workflow task calls.

What "differ" means: two numbers differ when ``|served - batch| > tolerance *
max(1, |batch|)`` (``tolerance`` 1e-6 by default: the online path folds windows
incrementally and may round differently than the batch path); other values
(strings, booleans, times) differ unless equal; a null and a value differ.

When a prediction can be compared: online reads run ahead of offline landing (the
streamer writes Redis at once and lands the same events as Parquet a little later,
within ``FLUSH_SECONDS`` = 2 s of reading them, then announces DataArrived). A
prediction served in the last ``settle`` seconds (30 by default) is left out, as
the events it saw may not be landed yet; a caller that knows the events landed (it
saw their DataArrived, as the tests do) may pass ``settle=0``.

Not compared: request-time features (a request source, or ``request:`` columns)
exist only in the request, so there is no batch value to compare with.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.blobs import BlobStore, open_blob_store
from strata.core.errors import InvalidArgumentError, StrataError
from strata.core.settings import BlobSettings, load
from strata.sdk.client import CommandError, answer, service_channel
from strata.sdk.features.commands import connect
from strata.sdk.features.values import entity_row

TOLERANCE = 1e-6
SETTLE = 30.0
"""Seconds a prediction waits before it is compared: the events it saw must be landed."""
LIMIT = 10_000
"""Most predictions one report reads, newest excluded past the limit."""
POLL = 0.5
RESULT_FILE = "part-0.parquet"
PREDICTION = "__prediction_id"
SERVED = "__served_at"
REGISTRY = "strata.registry.v1.ModelRegistryService"
_TERMINAL = (fpb.TRAINING_SET_STATE_SUCCEEDED, fpb.TRAINING_SET_STATE_FAILED)


@dataclass(frozen=True)
class Compared:
    """One feature of one prediction: as served, and as the batch path computes it."""

    model_version: int
    feature: str
    served: Any
    batch: Any


@dataclass(frozen=True)
class FeatureSkew:
    """How one feature of one model version compares, over ``rows`` predictions."""

    feature: str
    model_version: int
    rows: int
    differing: int
    max_abs_diff: float | None
    """Over the numeric pairs; None when no pair was numeric."""
    mean_abs_diff: float | None

    @property
    def share(self) -> float:
        """Share of the rows whose values differ, 0 to 1."""
        return self.differing / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class SkewReport:
    """The report of one model over the predictions served in [since, until)."""

    model: str
    since: datetime | None
    until: datetime
    predictions: int
    """Predictions read."""
    features: tuple[FeatureSkew, ...]
    tolerance: float
    notes: Mapping[str, str] = field(default_factory=dict)
    """What was left out, or compared with a caveat, and why (request-time features, an
    unknown view, a view served at another version than the batch path's)."""

    @property
    def max_share(self) -> float:
        """The largest share of differing rows over every feature and version."""
        return max((f.share for f in self.features), default=0.0)

    def skewed(self) -> tuple[FeatureSkew, ...]:
        """The features (per version) with at least one differing row."""
        return tuple(f for f in self.features if f.differing)


def differs(served: Any, batch: Any, tolerance: float = TOLERANCE) -> bool:
    """Whether a served value and its batch value differ, by the rule the module states."""
    if served is None or batch is None:
        return (served is None) != (batch is None)
    if isinstance(served, bool) or isinstance(batch, bool):
        return served is not batch
    if _numeric(served) and _numeric(batch):
        return abs(float(served) - float(batch)) > tolerance * max(1.0, abs(float(batch)))
    return bool(served != batch)


def summarize(pairs: Iterable[Compared], tolerance: float = TOLERANCE) -> tuple[FeatureSkew, ...]:
    """Per (feature, model version): rows, differing rows, max and mean absolute difference."""
    groups: dict[tuple[str, int], list[Compared]] = defaultdict(list)
    for pair in pairs:
        groups[(pair.feature, pair.model_version)].append(pair)
    found = []
    for (feature, version), rows in sorted(groups.items()):
        gaps = [
            abs(float(r.served) - float(r.batch))
            for r in rows
            if _numeric(r.served) and _numeric(r.batch)
        ]
        found.append(
            FeatureSkew(
                feature=feature,
                model_version=version,
                rows=len(rows),
                differing=sum(differs(r.served, r.batch, tolerance) for r in rows),
                max_abs_diff=max(gaps) if gaps else None,
                mean_abs_diff=sum(gaps) / len(gaps) if gaps else None,
            )
        )
    return tuple(found)


def entity_items(entity_key: str) -> list[str]:
    """The ``column=value`` items of a canonical entity key (``a=1,b=x``)."""
    return [item for item in entity_key.split(",") if item]


async def skew_report(
    model: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = LIMIT,
    tolerance: float = TOLERANCE,
    settle: float = SETTLE,
    registry: ModelRegistryServiceStub | None = None,
    features: FeatureServiceStub | None = None,
) -> SkewReport:
    """The skew report of ``model`` over its predictions served from ``since`` (all kept
    ones when None) until ``until`` (now when None), at most ``limit`` of them, leaving
    out the last ``settle`` seconds. ``registry`` and ``features`` (the streamer) default
    to the services the settings name; the blob store is the one ``STRATA_BLOB_*``
    configures, which must be the streamer's.

    Raises :class:`CommandError` with one line when a service refuses or cannot be reached.
    """
    if limit < 1:
        raise CommandError(f"limit: expected a positive number of predictions, got {limit}")
    end = min(until or datetime.now(UTC), datetime.now(UTC) - timedelta(seconds=settle))
    if registry is None or features is None:
        async with _registry_channel() as registry_chan, connect() as streamer_chan:
            return await skew_report(
                model,
                since=since,
                until=end,
                limit=limit,
                tolerance=tolerance,
                settle=0,
                registry=registry or ModelRegistryServiceStub(registry_chan),
                features=features or FeatureServiceStub(streamer_chan),
            )
    records = await _predictions(registry, model, since, end, limit)
    notes: dict[str, str] = {}
    pairs: list[Compared] = []
    try:
        async with open_blob_store(load(BlobSettings)) as blobs:
            for view, refs in _features_by_view(records, notes).items():
                pairs += await _view_pairs(features, blobs, view, refs, records, notes)
    except (StrataError, OSError) as error:
        raise CommandError(f"the blob store: {error}") from None
    return SkewReport(
        model=model,
        since=since,
        until=end,
        predictions=len(records),
        features=summarize(pairs, tolerance),
        tolerance=tolerance,
        notes=notes,
    )


async def show(
    model: str,
    *,
    since: str,
    limit: int,
    tolerance: float,
    settle: float,
    fail_on: float | None,
    out: Console,
) -> None:
    """Print the report of ``model`` over the predictions served from ``since`` (ISO 8601,
    UTC without an offset; empty: all kept); CommandError (exit 1) when ``fail_on`` is set
    and a feature's share of differing rows exceeds it."""
    report = await skew_report(
        model,
        since=parse_time(since, "--since") if since else None,
        limit=limit,
        tolerance=tolerance,
        settle=settle,
    )
    if not report.predictions:
        out.print(
            f"no recorded prediction of model {model!r} was served in the range: nothing to compare"
        )
        return
    out.print(report_table(report))
    for what, why in report.notes.items():
        out.print(f"{what}: {why}", soft_wrap=True)
    if fail_on is not None and report.max_share > fail_on:
        worst = max(report.features, key=lambda f: f.share)
        raise CommandError(
            f"skew of model {model!r}: {worst.feature} (version {worst.model_version}) differs "
            f"in {worst.share:.1%} of rows, above --fail-on {fail_on:.1%}"
        )


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time, UTC when it has no offset; CommandError naming ``option`` otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{option} {text!r}: expected an ISO 8601 time, e.g. 2026-01-01 or 2026-01-01T03:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def report_table(report: SkewReport) -> Table:
    """The report as a table: one row per feature and model version."""
    since = report.since.isoformat() if report.since else "the oldest kept"
    table = Table(
        "feature",
        "version",
        "rows",
        "differ",
        "share",
        "max |diff|",
        "mean |diff|",
        title=f"skew of {report.model}: {report.predictions} predictions served from {since} "
        f"to {report.until.isoformat(timespec='seconds')}, tolerance {report.tolerance:g}",
    )
    for row in report.features:
        table.add_row(
            row.feature,
            str(row.model_version),
            str(row.rows),
            str(row.differing),
            f"{row.share:.1%}",
            _number(row.max_abs_diff),
            _number(row.mean_abs_diff),
            style="red" if row.differing else None,
        )
    return table


class SkewFoundError(Exception):
    """A workflow's skew check found more differing rows than it allows."""


def skew_task(
    model: str,
    since_hours: float = 24.0,
    limit: int = LIMIT,
    tolerance: float = TOLERANCE,
    settle: float = SETTLE,
    fail_on: float | None = None,
) -> dict[str, Any]:
    """The skew report of the last ``since_hours`` as a workflow task (entrypoint
    ``strata.sdk.skew:skew_task``): its outputs (predictions compared, the largest share,
    each ``feature@version``'s share) feed downstream conditions; with ``fail_on``, a
    share above it fails the task with :class:`SkewFoundError` naming the features."""
    since = datetime.now(UTC) - timedelta(hours=since_hours)
    report = asyncio.run(
        skew_report(model, since=since, limit=limit, tolerance=tolerance, settle=settle)
    )
    if fail_on is not None and report.max_share > fail_on:
        raise SkewFoundError(
            f"skew of model {model!r}: "
            + ", ".join(f"{f.feature} v{f.model_version} {f.share:.1%}" for f in report.skewed())
        )
    return {
        "predictions": report.predictions,
        "max_share": report.max_share,
        "features": {f"{f.feature}@{f.model_version}": f.share for f in report.features},
    }


async def _predictions(
    registry: ModelRegistryServiceStub,
    model: str,
    since: datetime | None,
    until: datetime,
    limit: int,
) -> list[pb.PredictionRecord]:
    request = pb.ListPredictionsRequest(
        model_name=model, served_before=_stamp(until), page_size=min(limit, 1000)
    )
    if since is not None:
        request.served_after.CopyFrom(_stamp(since))
    found: list[pb.PredictionRecord] = []
    while len(found) < limit:
        page: pb.ListPredictionsResponse = await answer(
            registry.ListPredictions(request), f"predictions of model {model!r}", "registry"
        )
        found += page.predictions
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    return found[:limit]


def _features_by_view(
    records: Sequence[pb.PredictionRecord], notes: dict[str, str]
) -> dict[str, list[str]]:
    """The served feature references grouped by view; request columns go to ``notes``."""
    views: dict[str, list[str]] = {}
    for record in records:
        for ref in record.features:
            view, sep, _ = ref.partition(":")
            if not sep or view == "request":
                notes[ref] = "a request column: the batch path has no value for it"
                continue
            refs = views.setdefault(view, [])
            if ref not in refs:
                refs.append(ref)
    return views


async def _view_pairs(
    features: FeatureServiceStub,
    blobs: BlobStore,
    view: str,
    refs: list[str],
    records: Sequence[pb.PredictionRecord],
    notes: dict[str, str],
) -> list[Compared]:
    """Each served value of ``view``'s ``refs`` beside its point-in-time batch value."""
    try:
        reply = await features.GetFeatureView(fpb.GetFeatureViewRequest(name=view))
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            notes[view] = f"feature view: {error.details()}"
            return []
        raise CommandError(f"the streamer: {error.code().name}: {error.details()}") from None
    spec = reply.feature_view.spec
    if spec.source.WhichOneof("kind") == "request":
        notes[view] = "computed at request time: the batch path has no value for it"
        return []
    rows = [r for r in records if any(ref in r.features for ref in refs)]
    served = sorted({v.version for r in rows for v in r.feature_views if v.name == view})
    if served and served != [reply.feature_view.version]:
        notes[view] = (
            f"served at version {', '.join(map(str, served))}; the batch path recomputes "
            f"with the current version {reply.feature_view.version}"
        )
    labels = _labels(spec, rows, notes)
    if labels.num_rows == 0:
        return []
    batch = await _training_set(features, blobs, labels, refs)
    by_id = {
        prediction_id: index
        for index, prediction_id in enumerate(batch.column(PREDICTION).to_pylist())
    }
    columns = {ref: batch.column(ref).to_pylist() for ref in refs}
    pairs = []
    for record in rows:
        index = by_id.get(record.prediction_id)
        if index is None:
            continue
        for ref in refs:
            if ref in record.features:
                served = _scalar(record.features[ref].value)
                pairs.append(Compared(record.model_version, ref, served, columns[ref][index]))
    return pairs


def _labels(
    spec: fpb.FeatureViewSpec, records: Sequence[pb.PredictionRecord], notes: dict[str, str]
) -> pa.Table:
    """One label row per prediction: ``spec``'s entity keys, served time, prediction id."""
    keys = [key.name for key in spec.entities]
    columns: dict[str, list[Any]] = {key: [] for key in keys}
    ids, times = [], []
    for record in records:
        items = [i for i in entity_items(record.entity_key) if i.partition("=")[0] in keys]
        try:
            row = entity_row(spec, items)
        except InvalidArgumentError as error:
            notes[f"prediction {record.prediction_id}"] = (
                f"entity key {record.entity_key!r}: {error.message}"
            )
            continue
        for key in keys:
            columns[key].append(_scalar(row.keys[key]))
        ids.append(record.prediction_id)
        times.append(record.served_at.ToDatetime(tzinfo=UTC))
    types = {key.name: key.type for key in spec.entities}
    arrays = {
        key: pa.array(values, pa.int64() if types[key] == fpb.VALUE_TYPE_INT64 else pa.string())
        for key, values in columns.items()
    }
    return pa.table(
        {
            **arrays,
            SERVED: pa.array(times, pa.timestamp("us", tz="UTC")),
            PREDICTION: pa.array(ids, pa.string()),
        }
    )


async def _training_set(
    features: FeatureServiceStub, blobs: BlobStore, labels: pa.Table, refs: list[str]
) -> pa.Table:
    """The point-in-time training set of ``refs`` for ``labels``, read back."""
    sink = io.BytesIO()
    pq.write_table(labels, sink)
    content = sink.getvalue()
    key = f"labels/skew-{hashlib.sha256(content).hexdigest()}.parquet"
    await blobs.put(key, content)
    request = fpb.MaterializeTrainingSetRequest(
        labels_uri=key, event_time_column=SERVED, features=refs, request_id=str(uuid.uuid4())
    )
    started: fpb.MaterializeTrainingSetResponse = await answer(
        features.MaterializeTrainingSet(request), "skew training set", "streamer"
    )
    found = started.training_set
    while found.state not in _TERMINAL:
        await asyncio.sleep(POLL)
        reply: fpb.GetTrainingSetResponse = await answer(
            features.GetTrainingSet(
                fpb.GetTrainingSetRequest(training_set_id=found.training_set_id)
            ),
            "skew training set",
            "streamer",
        )
        found = reply.training_set
    if found.state == fpb.TRAINING_SET_STATE_FAILED:
        raise CommandError(f"training set {found.training_set_id} failed: {found.message}")
    result = await blobs.get(f"{found.output_uri}/{RESULT_FILE}")
    return pq.read_table(io.BytesIO(result))


def _scalar(value: fpb.Value) -> Any:
    """A Value as the Python scalar Arrow gives for the same column."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    return getattr(value, kind)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.6g}" if math.isfinite(value) else str(value)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _registry_channel() -> grpc.aio.Channel:
    return service_channel("registry", idempotent=(f"{REGISTRY}/ListPredictions",))
