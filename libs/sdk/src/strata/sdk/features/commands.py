"""``strata features apply|list|get|online|delete|backfill``: the streamer's catalog
and online calls, for people.

Each failure becomes one line naming what to fix (the file and field, the view
and field the streamer refused, an ``--entity`` option, or the streamer's
address), never a traceback. ``training-set`` (:mod:`strata.sdk.features.training`)
reaches the streamer through ``connect`` and ``call`` too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc
from rich.console import Console
from rich.table import Table

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.errors import StrataError
from strata.core.rpc.status import field_violations
from strata.sdk.client import CommandError, service_channel
from strata.sdk.features.loading import load_feature_views
from strata.sdk.features.values import entity_row, show_value
from strata.transforms.durations import format_duration

FEATURES = "strata.features.v1.FeatureService"
T = TypeVar("T")


async def apply(path: Path, *, validate_only: bool, out: Console) -> None:
    """Apply every view ``path`` declares; one line per view with its version."""
    try:
        specs = [view.to_spec() for view in load_feature_views(path)]
    except StrataError as error:
        raise CommandError(f"{path}: {error}") from None
    async with connect() as chan:
        stub = FeatureServiceStub(chan)
        for spec in specs:
            request = pb.ApplyFeatureViewRequest(spec=spec, validate_only=validate_only)
            reply: pb.ApplyFeatureViewResponse = await call(
                stub.ApplyFeatureView(request), f"feature view {spec.name!r}"
            )
            what = "changed" if reply.changed else "unchanged"
            verb = "would be" if validate_only else "is"
            out.print(f"{spec.name}: {verb} version {reply.feature_view.version} ({what})")


async def list_views(out: Console) -> None:
    """A table of the current version of every view the caller may read."""
    table = Table("name", "version", "source", "entities", "features", "owner", "applied", "by")
    token = ""
    async with connect() as chan:
        stub = FeatureServiceStub(chan)
        while True:
            request = pb.ListFeatureViewsRequest(page_token=token)
            page: pb.ListFeatureViewsResponse = await call(stub.ListFeatureViews(request), "list")
            for view in page.feature_views:
                spec = view.spec
                table.add_row(
                    spec.name,
                    str(view.version),
                    _source(spec.source),
                    ", ".join(e.name for e in spec.entities),
                    str(len(spec.features)),
                    spec.owner or "-",
                    view.applied_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"),
                    view.applied_by,
                )
            token = page.next_page_token
            if not token:
                break
    out.print(table)


async def get(name: str, version: int, out: Console) -> None:
    """One view: its catalog entry, then a table of its features."""
    async with connect() as chan:
        view = await _view(FeatureServiceStub(chan), name, version)
    spec = view.spec
    out.print(f"{spec.name} version {view.version} (sha256 {view.spec_sha256})")
    out.print(f"source: {_source(spec.source)}; event time: {spec.event_time_column or '-'}")
    keys = ", ".join(f"{e.name} {_type(e.type)}" for e in spec.entities)
    out.print(f"entities: {keys}")
    out.print(f"ttl: {_ttl(spec)}; owner: {spec.owner or '-'}")
    if spec.allowed_groups:
        out.print(f"groups: {', '.join(spec.allowed_groups)}")
    for transform in spec.transforms:
        out.print(f"transform: {transform.name} = {transform.expression}")
    table = Table("feature", "type", "column", "aggregation", "window", "default")
    for feature in spec.features:
        has = feature.HasField("aggregation")
        function = pb.AggregationFunction.Name(feature.aggregation.function) if has else "latest"
        table.add_row(
            feature.name,
            _type(feature.type),
            feature.column or feature.name,
            function.removeprefix("AGGREGATION_FUNCTION_").lower(),
            _window(feature) if has else "-",
            show_value(feature.default_value),
        )
    out.print(table)


async def online(name: str, entity: Sequence[str], out: Console) -> None:
    """Every feature of ``name`` for the entity ``entity`` (``key=value`` items) names."""
    async with connect() as chan:
        stub = FeatureServiceStub(chan)
        view = await _view(stub, name, 0)
        try:
            row = entity_row(view.spec, entity)
        except StrataError as error:
            raise CommandError(str(error)) from None
        refs = [f"{name}:{feature.name}" for feature in view.spec.features]
        request = pb.GetOnlineFeaturesRequest(features=refs, entities=[row])
        reply: pb.GetOnlineFeaturesResponse = await call(
            stub.GetOnlineFeatures(request), f"feature view {name!r}"
        )
    table = Table("feature", "value", "status", "event time")
    for feature, value in zip(view.spec.features, reply.rows[0].values, strict=True):
        stamp = value.event_time
        table.add_row(
            feature.name,
            show_value(value.value),
            pb.FeatureStatus.Name(value.status).removeprefix("FEATURE_STATUS_").lower(),
            stamp.ToDatetime().isoformat() + "Z" if value.HasField("event_time") else "-",
        )
    out.print(table)


async def delete(name: str, out: Console) -> None:
    """Delete ``name`` (every version), its streams and online values; say what went."""
    async with connect() as chan:
        request = pb.DeleteFeatureViewRequest(name=name)
        reply: pb.DeleteFeatureViewResponse = await call(
            FeatureServiceStub(chan).DeleteFeatureView(request), f"feature view {name!r}"
        )
    out.print(
        f"{name}: deleted (version {reply.version}, {reply.versions_deleted} version(s), "
        f"{reply.online_keys_deleted} online value(s)); its offline partitions stay"
    )


async def backfill(name: str, start: str | None, end: str | None, out: Console) -> None:
    """Rebuild ``name``'s online values from its offline partitions, showing progress."""
    request = pb.BackfillFeatureViewRequest(name=name)
    if start is not None:
        request.start_time.FromDatetime(parse_time(start, "--from"))
    if end is not None:
        request.end_time.FromDatetime(parse_time(end, "--to"))
    async with connect() as chan:
        with out.status(f"{name}: reading the offline partitions ...") as status:

            async def follow() -> pb.BackfillFeatureViewResponse:
                last = pb.BackfillFeatureViewResponse()
                async for step in FeatureServiceStub(chan).BackfillFeatureView(request):
                    last = step
                    status.update(
                        f"{name}: {step.entities_written}/{step.entities_total} entities written"
                    )
                return last

            last = await call(follow(), f"feature view {name!r}")
    out.print(
        f"{name}: version {last.feature_view.version} backfilled: {last.entities_written} "
        f"entities from {last.rows_read} rows in {len(last.partitions)} partition(s)"
    )


async def _view(stub: FeatureServiceStub, name: str, version: int) -> pb.FeatureView:
    request = pb.GetFeatureViewRequest(name=name, version=version)
    reply: pb.GetFeatureViewResponse = await call(stub.GetFeatureView(request), "get")
    return reply.feature_view


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time, UTC when it has no offset; CommandError naming ``option`` otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{option} {text!r}: expected an ISO 8601 time, e.g. 2026-01-01 or 2026-01-01T03:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _source(source: pb.Source) -> str:
    kind = source.WhichOneof("kind")
    if kind == "request":
        return "request"
    return f"{kind} {getattr(source, kind)}" if kind else "-"


def _type(value: pb.ValueType.ValueType) -> str:
    return pb.ValueType.Name(value).removeprefix("VALUE_TYPE_").lower()


def _ttl(spec: pb.FeatureViewSpec) -> str:
    return format_duration(spec.ttl.ToMicroseconds()) if spec.HasField("ttl") else "forever"


def _window(feature: pb.Feature) -> str:
    return format_duration(feature.aggregation.window.ToMicroseconds())


def connect() -> grpc.aio.Channel:
    """A channel to the streamer the settings name, as the caller the settings authenticate."""
    return service_channel(
        "streamer",
        idempotent=(
            f"{FEATURES}/GetFeatureView",
            f"{FEATURES}/ListFeatureViews",
            f"{FEATURES}/GetOnlineFeatures",
            f"{FEATURES}/GetTrainingSet",
        ),
    )


async def call(pending: Awaitable[T], what: str) -> T:
    """The reply of ``pending``, or a CommandError saying in one line what went wrong."""
    try:
        return await pending
    except grpc.aio.AioRpcError as error:
        violations = field_violations(error)
        if violations:
            fields = "; ".join(f"{field}: {problem}" for field, problem in violations.items())
            raise CommandError(f"{what} refused: {fields}") from None
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"the streamer is not reachable: {error.details()}") from None
        raise CommandError(f"{what}: {error.code().name}: {error.details()}") from None
