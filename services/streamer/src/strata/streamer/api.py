"""The streamer's gRPC edge: converts FeatureService messages, calls the domain, the
catalog store and the online library, converts back.

Every read checks the view's ``allowed_groups`` against the caller's groups (its
roles; see :mod:`strata.streamer.domain.access`), training sets included: a
caller sees a training set only if it may read every view it joins.
``GetOnlineFeatures`` takes the views' current versions from memory
(:mod:`strata.streamer.current_views`, which says how stale they may be).
``MaterializeTrainingSet`` checks the request and the label file's columns, then
stores a job that :mod:`strata.streamer.training` builds in the background.
``BackfillFeatureView`` streams the progress of :mod:`strata.streamer.backfill`.
``DeleteFeatureView`` removes the view from the catalog and its online hashes;
the streams notice at their next look at the catalog (``strata.streamer.streams``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime

import pyarrow as pa
from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from strata.api.common.v1.refs_pb2 import FeatureViewRef, PartitionRef
from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceServicer
from strata.core.blobs import BlobNotFoundError
from strata.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from strata.core.paging import page_size, position_after, token_of
from strata.core.rpc.auth import current_principal
from strata.core.runtime import ServiceContext
from strata.core.versions import next_version, spec_sha256
from strata.streamer import offline
from strata.streamer.backfill import backfill
from strata.streamer.current_views import CurrentViews
from strata.streamer.domain.access import check_read
from strata.streamer.domain.refs import FeatureRef, parse_refs, views_of
from strata.streamer.domain.training import (
    TrainingSetState,
    check_labels,
    output_folder,
    time_column,
)
from strata.streamer.store import (
    StoredTrainingSet,
    StoredView,
    TrainingSetStore,
    ViewStore,
    ViewVersion,
)
from strata.streamer.values import entity_key
from strata.transforms.definition import FeatureView
from strata.transforms.online import (
    OnlineRead,
    OnlineValue,
    delete_online,
    read_online_views,
    select,
)
from strata.transforms.spec import value_of, view_from_spec
from strata.transforms.types import FeatureStatus

_STATES = {
    TrainingSetState.PENDING: pb.TRAINING_SET_STATE_PENDING,
    TrainingSetState.RUNNING: pb.TRAINING_SET_STATE_RUNNING,
    TrainingSetState.SUCCEEDED: pb.TRAINING_SET_STATE_SUCCEEDED,
    TrainingSetState.FAILED: pb.TRAINING_SET_STATE_FAILED,
}
_STATUSES = {
    FeatureStatus.PRESENT: pb.FEATURE_STATUS_PRESENT,
    FeatureStatus.NOT_FOUND: pb.FEATURE_STATUS_NOT_FOUND,
    FeatureStatus.EXPIRED: pb.FEATURE_STATUS_EXPIRED,
}


class FeatureApi(FeatureServiceServicer):
    """FeatureService over the catalog in the service's schema and the online store."""

    def __init__(self, context: ServiceContext, current: CurrentViews) -> None:
        self._views = ViewStore(context.pool, context.schema, context.outbox)
        self._current = current
        self._context = context
        self._redis = context.redis
        self._redis_reads = context.redis_reads
        self._blobs = context.blobs
        self._training_sets = TrainingSetStore(context.pool, context.schema, context.outbox)
        self._compiled: dict[str, FeatureView] = {}

    @override
    async def ApplyFeatureView(
        self, request: pb.ApplyFeatureViewRequest, context: object
    ) -> pb.ApplyFeatureViewResponse:
        view_from_spec(request.spec)
        principal = current_principal().name
        if request.validate_only:
            return await self._preview(request.spec, principal)
        applied = await self._views.apply(request.spec, applied_by=principal)
        return pb.ApplyFeatureViewResponse(
            feature_view=_feature_view(applied.view), changed=applied.changed
        )

    @override
    async def GetFeatureView(
        self, request: pb.GetFeatureViewRequest, context: object
    ) -> pb.GetFeatureViewResponse:
        stored = await self._views.get(request.name, request.version)
        if stored is None:
            version = f" version {request.version}" if request.version else ""
            raise NotFoundError(f"feature view {request.name!r}{version}")
        check_read(request.name, stored.spec.allowed_groups, current_principal().roles)
        return pb.GetFeatureViewResponse(feature_view=_feature_view(stored))

    @override
    async def ListFeatureViews(
        self, request: pb.ListFeatureViewsRequest, context: object
    ) -> pb.ListFeatureViewsResponse:
        size = page_size(request.page_size)
        found = await self._views.list(
            after=position_after(request.page_token),
            limit=size + 1,
            groups=current_principal().roles,
        )
        page = found[:size]
        more = len(found) > size
        return pb.ListFeatureViewsResponse(
            feature_views=[_feature_view(v) for v in page],
            next_page_token=token_of(page[-1].spec.name) if more else "",
        )

    @override
    async def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: object
    ) -> pb.GetOnlineFeaturesResponse:
        refs = parse_refs(list(request.features))
        names = views_of(refs)
        stored = await self._current.of(self._views, names)
        groups = current_principal().roles
        views = {name: self._readable(name, stored, groups) for name in names}
        _check_features(refs, views)
        reads = [
            OnlineRead(
                select(view, [ref.feature for ref in refs if ref.view == name]),
                [entity_key(view, row, f"entities[{i}]") for i, row in enumerate(request.entities)],
            )
            for name, view in views.items()
        ]
        answers = await read_online_views(self._redis_reads, reads, datetime.now(UTC))
        columns: dict[tuple[str, str], list[OnlineValue]] = {}
        for read, values in zip(reads, answers, strict=True):
            for position, feature in enumerate(read.features):
                columns[(read.view.name, feature)] = [row[position] for row in values]
        response = pb.GetOnlineFeaturesResponse(
            feature_views=[FeatureViewRef(name=n, version=stored[n].version) for n in names]
        )
        for i in range(len(request.entities)):
            vector = response.rows.add()
            for ref in refs:
                vector.values.append(_feature_value(columns[(ref.view, ref.feature)][i]))
        return response

    @override
    async def MaterializeTrainingSet(
        self, request: pb.MaterializeTrainingSetRequest, context: object
    ) -> pb.MaterializeTrainingSetResponse:
        groups = current_principal().roles
        if request.request_id:
            started = await self._training_sets.by_request(request.request_id)
            if started is not None:
                _check_training_set(started, groups)
                return pb.MaterializeTrainingSetResponse(training_set=_training_set(started))
        refs = parse_refs(list(request.features))
        names = views_of(refs)
        stored = await self._views.current_of(names)
        views = [self._readable(name, stored, groups) for name in names]
        _check_features(refs, {view.name: view for view in views})
        for view in views:
            if stored[view.name].spec.source.WhichOneof("kind") not in ("topic", "dataset"):
                raise InvalidArgumentError(
                    "features",
                    f"feature view {view.name!r} is sourced from requests, which have no "
                    "history; training sets read the partitions of topics and datasets",
                )
        if not request.labels_uri:
            raise InvalidArgumentError("labels_uri", "is empty: name the label file (Parquet)")
        labels = await self._labels(request.labels_uri)
        time = time_column(request.event_time_column)
        check_labels(labels, request.labels_uri, time, views)
        training_set_id = str(uuid.uuid4())
        created = await self._training_sets.create(
            training_set_id,
            request,
            [ViewVersion(v.name, stored[v.name].version, tuple(v.allowed_groups)) for v in views],
            output_folder(request.output_uri, training_set_id),
        )
        return pb.MaterializeTrainingSetResponse(training_set=_training_set(created))

    @override
    async def GetTrainingSet(
        self, request: pb.GetTrainingSetRequest, context: object
    ) -> pb.GetTrainingSetResponse:
        try:
            uuid.UUID(request.training_set_id)
        except ValueError:
            raise InvalidArgumentError(
                "training_set_id", f"{request.training_set_id!r} is not a training set id (UUID)"
            ) from None
        found = await self._training_sets.get(request.training_set_id)
        if found is None:
            raise NotFoundError(f"training set {request.training_set_id!r}")
        _check_training_set(found, current_principal().roles)
        return pb.GetTrainingSetResponse(training_set=_training_set(found))

    @override
    async def DeleteFeatureView(
        self, request: pb.DeleteFeatureViewRequest, context: object
    ) -> pb.DeleteFeatureViewResponse:
        if not request.name:
            raise InvalidArgumentError("name", "is empty: name the feature view to delete")
        stored = await self._views.get(request.name)
        if stored is None:
            raise NotFoundError(f"feature view {request.name!r}")
        principal = current_principal()
        check_read(request.name, stored.spec.allowed_groups, principal.roles)
        deleted = await self._views.delete(
            request.name, version=stored.version, deleted_by=principal.name
        )
        if deleted is None:
            raise FailedPreconditionError(
                f"feature view {request.name!r} changed while it was being deleted "
                f"(it was at version {stored.version}); look at it again and retry"
            )
        keys = await delete_online(self._redis, request.name)
        return pb.DeleteFeatureViewResponse(
            version=deleted.version, versions_deleted=deleted.versions, online_keys_deleted=keys
        )

    @override
    async def BackfillFeatureView(
        self, request: pb.BackfillFeatureViewRequest, context: object
    ) -> AsyncIterator[pb.BackfillFeatureViewResponse]:
        if not request.name:
            raise InvalidArgumentError("name", "is empty: name the feature view to backfill")
        start = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None
        if start is not None and end is not None and end < start:
            raise InvalidArgumentError("end_time", f"{end} is before start_time {start}")
        stored = await self._views.get(request.name)
        if stored is None:
            raise NotFoundError(f"feature view {request.name!r}")
        check_read(request.name, stored.spec.allowed_groups, current_principal().roles)
        if stored.spec.source.WhichOneof("kind") not in ("topic", "dataset"):
            raise InvalidArgumentError(
                "name",
                f"feature view {request.name!r} is sourced from requests: it has no online "
                "values to backfill",
            )
        ref = FeatureViewRef(name=request.name, version=stored.version)
        async for step in backfill(self._context, stored, start, end):
            yield pb.BackfillFeatureViewResponse(
                feature_view=ref,
                partitions=[
                    PartitionRef(dataset=p.dataset, partition=p.partition, checksum=p.checksum)
                    for p in step.partitions
                ],
                rows_read=step.rows_read,
                entities_written=step.entities_written,
                entities_total=step.entities_total,
                done=step.done,
            )

    def _readable(
        self, name: str, stored: dict[str, StoredView], groups: Collection[str]
    ) -> FeatureView:
        """The compiled current version of ``name``: NOT_FOUND or PERMISSION_DENIED naming it."""
        if name not in stored:
            raise NotFoundError(f"feature view {name!r}")
        check_read(name, stored[name].spec.allowed_groups, groups)
        return self._view(stored[name])

    async def _labels(self, uri: str) -> pa.Schema:
        """The label file's columns; NOT_FOUND or INVALID_ARGUMENT naming ``labels_uri``."""
        try:
            content = await self._blobs.get(uri)
        except ValueError as error:
            raise InvalidArgumentError("labels_uri", str(error)) from None
        except BlobNotFoundError:
            raise NotFoundError(f"labels_uri {uri!r}: no such file in the blob store") from None
        try:
            return offline.decode(content).schema
        except (pa.ArrowInvalid, OSError) as error:
            raise InvalidArgumentError(
                "labels_uri", f"{uri!r} is not a Parquet file: {error}"
            ) from None

    def _view(self, stored: StoredView) -> FeatureView:
        """The compiled view of a stored version, compiled once per spec."""
        view = self._compiled.get(stored.spec_sha256)
        if view is None:
            view = self._compiled[stored.spec_sha256] = view_from_spec(stored.spec)
        return view

    async def _preview(
        self, spec: pb.FeatureViewSpec, principal: str
    ) -> pb.ApplyFeatureViewResponse:
        """What applying ``spec`` would store, without storing it."""
        current = await self._views.get(spec.name)
        sha = spec_sha256(spec)
        outcome = next_version(
            current.version if current else None, current.spec_sha256 if current else None, sha
        )
        applied_at = Timestamp()
        applied_at.GetCurrentTime()
        return pb.ApplyFeatureViewResponse(
            feature_view=pb.FeatureView(
                spec=spec,
                version=outcome.version,
                spec_sha256=sha,
                applied_at=applied_at,
                applied_by=principal,
            ),
            changed=outcome.changed,
        )


def _feature_view(stored: StoredView) -> pb.FeatureView:
    applied_at = Timestamp()
    applied_at.FromDatetime(stored.applied_at)
    return pb.FeatureView(
        spec=stored.spec,
        version=stored.version,
        spec_sha256=stored.spec_sha256,
        applied_at=applied_at,
        applied_by=stored.applied_by,
    )


def _feature_value(online: OnlineValue) -> pb.FeatureValue:
    value = pb.FeatureValue(value=value_of(online.value), status=_STATUSES[online.status])
    if online.event_time is not None:
        value.event_time.FromDatetime(online.event_time)
    return value


def _check_features(refs: list[FeatureRef], views: dict[str, FeatureView]) -> None:
    """NOT_FOUND naming the first reference to a feature its view lacks."""
    known = {name: {f.name for f in view.resolved_features} for name, view in views.items()}
    for ref in refs:
        if ref.feature not in known[ref.view]:
            raise NotFoundError(f"feature '{ref.view}:{ref.feature}'")


def _check_training_set(found: StoredTrainingSet, groups: Collection[str]) -> None:
    """PERMISSION_DENIED unless a caller in ``groups`` may read every view of the set."""
    for view in found.feature_views:
        check_read(view.name, view.allowed_groups, groups)


def _training_set(found: StoredTrainingSet) -> pb.TrainingSet:
    message = pb.TrainingSet(
        training_set_id=found.training_set_id,
        state=_STATES[found.state],
        progress=found.progress,
        label_rows=found.label_rows,
        rows_written=found.rows_written,
        output_uri=found.output_uri,
        checksum=found.checksum,
        feature_views=[FeatureViewRef(name=v.name, version=v.version) for v in found.feature_views],
        partitions=[
            PartitionRef(dataset=p.dataset, partition=p.partition, checksum=p.checksum)
            for p in found.partitions
        ],
        request=found.request,
        message=found.message,
    )
    message.created_at.FromDatetime(found.created_at)
    if found.finished_at is not None:
        message.finished_at.FromDatetime(found.finished_at)
    return message
