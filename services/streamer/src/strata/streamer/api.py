"""The streamer's gRPC edge: converts FeatureService messages, calls the domain, the
catalog store and the online library, converts back.

Every read checks the view's ``allowed_groups`` against the caller's groups (its
roles; see :mod:`strata.streamer.domain.access`). Methods not written yet
(training sets) are inherited from the generated base class and answer
UNIMPLEMENTED.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from strata.api.common.v1.refs_pb2 import FeatureViewRef
from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceServicer
from strata.core.errors import NotFoundError
from strata.core.paging import page_size, position_after, token_of
from strata.core.rpc.auth import current_principal
from strata.core.runtime import ServiceContext
from strata.core.versions import next_version, spec_sha256
from strata.streamer.domain.access import check_read
from strata.streamer.domain.refs import parse_refs, views_of
from strata.streamer.store import StoredView, ViewStore
from strata.streamer.values import entity_key, value_of
from strata.transforms.definition import FeatureView
from strata.transforms.online import OnlineValue, read_online
from strata.transforms.spec import view_from_spec
from strata.transforms.types import FeatureStatus

_STATUSES = {
    FeatureStatus.PRESENT: pb.FEATURE_STATUS_PRESENT,
    FeatureStatus.NOT_FOUND: pb.FEATURE_STATUS_NOT_FOUND,
    FeatureStatus.EXPIRED: pb.FEATURE_STATUS_EXPIRED,
}


class FeatureApi(FeatureServiceServicer):
    """FeatureService over the catalog in the service's schema and the online store."""

    def __init__(self, context: ServiceContext) -> None:
        self._views = ViewStore(context.pool, context.schema, context.outbox)
        self._redis = context.redis
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
        stored = await self._views.current_of(names)
        groups = current_principal().roles
        views: dict[str, FeatureView] = {}
        for name in names:
            if name not in stored:
                raise NotFoundError(f"feature view {name!r}")
            check_read(name, stored[name].spec.allowed_groups, groups)
            views[name] = self._view(stored[name])
        known = {name: {f.name for f in view.resolved_features} for name, view in views.items()}
        for ref in refs:
            if ref.feature not in known[ref.view]:
                raise NotFoundError(f"feature '{ref.view}:{ref.feature}'")
        now = datetime.now(UTC)
        columns: dict[tuple[str, str], list[OnlineValue]] = {}
        for name, view in views.items():
            keys = [
                entity_key(view, row, f"entities[{i}]") for i, row in enumerate(request.entities)
            ]
            features = [ref.feature for ref in refs if ref.view == name]
            values = await read_online(self._redis, view, keys, features, now)
            for position, feature in enumerate(features):
                columns[(name, feature)] = [row[position] for row in values]
        response = pb.GetOnlineFeaturesResponse(
            feature_views=[FeatureViewRef(name=n, version=stored[n].version) for n in names]
        )
        for i in range(len(request.entities)):
            vector = response.rows.add()
            for ref in refs:
                vector.values.append(_feature_value(columns[(ref.view, ref.feature)][i]))
        return response

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
