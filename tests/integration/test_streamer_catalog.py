"""The feature-view catalog and online reads of a real ``python -m strata.streamer``.

What a team relies on: applying the same view twice changes nothing, a changed one
becomes the next version while the old one stays readable, an invalid view is
refused with INVALID_ARGUMENT naming the view and field and nothing is stored; a
view restricted to groups is hidden from (and refused to) callers outside them;
GetOnlineFeatures answers the values the streamer's writer stored, with status,
event time, TTL and defaults, and NOT_FOUND naming an unknown view or feature.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from redis.asyncio import Redis
from service_processes import running

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.rpc.status import field_violations
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
)
from strata.transforms.online import online_key, write_online
from strata.transforms.spec import view_to_spec
from strata.transforms.streaming import EntityKey, FeatureRow, WindowRow
from strata.transforms.types import ColumnType, FeatureStatus

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for the process: a guard against hanging, not a timing check."""
TOKENS = {
    "dev-token": {"principal": "alice", "roles": ["developer"]},
    "viewer-token": {"principal": "dashboard", "roles": ["viewer"]},
    "fraud-token": {"principal": "bob", "roles": ["viewer", "fraud"]},
}


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


DEV = _as("dev-token")
VIEWER = _as("viewer-token")
FRAUD = _as("fraud-token")


@pytest.fixture(scope="module")
async def streamer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A streamer process; yields its address once it is SERVING."""
    folder = tmp_path_factory.mktemp("streamer")
    async with running("streamer", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as service:
        yield service.address


@pytest.fixture
async def client(streamer: str) -> AsyncIterator[FeatureServiceStub]:
    async with grpc.aio.insecure_channel(streamer) as channel:
        yield FeatureServiceStub(channel)


def courier_view(name: str, *, groups: tuple[str, ...] = (), window: str = "1h") -> FeatureView:
    return FeatureView(
        name=name,
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            f"raw.{name}",
            (
                Column("courier_id", ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("minutes", ColumnType.DOUBLE),
            ),
        ),
        features=(
            Feature("deliveries", aggregation=Aggregation(AggregationFunction.COUNT, window)),
            Feature("minutes", default=-1.0),
        ),
        ttl="2h",
        owner="couriers-team",
        allowed_groups=groups,
    )


def _name(label: str) -> str:
    return f"{label}_{uuid.uuid4().hex[:10]}"


async def test_apply_reapply_and_change_make_versions(client: FeatureServiceStub) -> None:
    name = _name("couriers")
    spec = view_to_spec(courier_view(name))
    first = await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=spec), metadata=DEV)
    again = await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=spec), metadata=DEV)
    wider = view_to_spec(courier_view(name, window="2h"))
    changed = await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=wider), metadata=DEV)

    assert (first.feature_view.version, first.changed) == (1, True)
    assert first.feature_view.applied_by == "alice"
    assert first.feature_view.spec == spec
    assert (again.feature_view.version, again.changed) == (1, False)
    assert again.feature_view.applied_at == first.feature_view.applied_at, "a no-op stores nothing"
    assert (changed.feature_view.version, changed.changed) == (2, True)
    assert changed.feature_view.spec_sha256 != first.feature_view.spec_sha256

    current = await client.GetFeatureView(pb.GetFeatureViewRequest(name=name), metadata=VIEWER)
    old = await client.GetFeatureView(
        pb.GetFeatureViewRequest(name=name, version=1), metadata=VIEWER
    )
    assert (current.feature_view.version, current.feature_view.spec) == (2, wider)
    assert (old.feature_view.version, old.feature_view.spec) == (1, spec)

    preview = await client.ApplyFeatureView(
        pb.ApplyFeatureViewRequest(spec=spec, validate_only=True), metadata=DEV
    )
    assert (preview.feature_view.version, preview.changed) == (3, True)
    still = await client.GetFeatureView(pb.GetFeatureViewRequest(name=name), metadata=VIEWER)
    assert still.feature_view.version == 2, "validate_only stores nothing"


async def test_an_invalid_view_is_refused_naming_view_and_field_and_nothing_is_stored(
    client: FeatureServiceStub,
) -> None:
    name = _name("broken")
    spec = view_to_spec(courier_view(name))
    spec.features[1].column = "speed"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=spec), metadata=DEV)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert len(violations) == 1
    (field,) = violations
    assert field.startswith(f"feature_view[{name}].features[minutes]"), field
    assert "speed" in violations[field]

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.GetFeatureView(pb.GetFeatureViewRequest(name=name), metadata=DEV)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_restricted_view_is_read_only_by_its_groups(client: FeatureServiceStub) -> None:
    prefix = _name("acl")
    open_name, closed_name = f"{prefix}_a", f"{prefix}_b"
    for view in (courier_view(open_name), courier_view(closed_name, groups=("fraud",))):
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )

    got = await client.GetFeatureView(pb.GetFeatureViewRequest(name=closed_name), metadata=FRAUD)
    assert got.feature_view.spec.allowed_groups == ["fraud"]
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await client.GetFeatureView(pb.GetFeatureViewRequest(name=closed_name), metadata=VIEWER)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert closed_name in (denied.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as online:
        await client.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=[f"{closed_name}:minutes"],
                entities=[pb.EntityRow(keys={"courier_id": pb.Value(int64_value=1)})],
            ),
            metadata=VIEWER,
        )
    assert online.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def listed(metadata: tuple[tuple[str, str], ...]) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            page = await client.ListFeatureViews(
                pb.ListFeatureViewsRequest(page_size=1, page_token=token), metadata=metadata
            )
            names += [v.spec.name for v in page.feature_views if v.spec.name.startswith(prefix)]
            token = page.next_page_token
            if not token:
                return names

    assert await listed(VIEWER) == [open_name]
    assert await listed(FRAUD) == [open_name, closed_name]


async def test_online_features_read_what_the_writer_stored(
    client: FeatureServiceStub, online: Redis
) -> None:
    name = _name("couriers")
    view = courier_view(name)
    await client.ApplyFeatureView(pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV)
    now = datetime.now(UTC).replace(microsecond=0)
    fresh, stale = now - timedelta(minutes=10), now - timedelta(hours=3)

    def row(minutes: float | None, time: datetime, deliveries: int) -> FeatureRow:
        """A row as the streamer writes it: ``deliveries`` events at ``time`` in the window."""
        events = (WindowRow(int(time.timestamp() * 1_000_000), ()),) * deliveries
        return FeatureRow({"minutes": minutes}, time, FeatureStatus.PRESENT, events)

    rows: dict[EntityKey, FeatureRow] = {
        (1,): row(12.5, fresh, 4),
        (2,): row(None, fresh, 1),
        (3,): row(30.0, stale, 9),
    }
    await write_online(online, view, rows)
    try:
        reply = await client.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=[f"{name}:minutes", f"{name}:deliveries"],
                entities=[
                    pb.EntityRow(keys={"courier_id": pb.Value(int64_value=k)}) for k in (1, 2, 3, 4)
                ],
            ),
            metadata=VIEWER,
        )
    finally:
        await online.delete(*(online_key(view, entity) for entity in rows))

    present, expired, missing = (
        pb.FEATURE_STATUS_PRESENT,
        pb.FEATURE_STATUS_EXPIRED,
        pb.FEATURE_STATUS_NOT_FOUND,
    )
    table = [[(v.value, v.status) for v in row.values] for row in reply.rows]
    assert table == [
        [(pb.Value(double_value=12.5), present), (pb.Value(int64_value=4), present)],
        [(pb.Value(double_value=-1.0), present), (pb.Value(int64_value=1), present)],
        [(pb.Value(double_value=-1.0), expired), (pb.Value(), expired)],
        [(pb.Value(double_value=-1.0), missing), (pb.Value(), missing)],
    ]
    assert reply.rows[0].values[0].event_time.ToDatetime(tzinfo=UTC) == fresh
    assert reply.rows[2].values[0].event_time.ToDatetime(tzinfo=UTC) == stale
    assert not reply.rows[3].values[0].HasField("event_time")
    assert [(r.name, r.version) for r in reply.feature_views] == [(name, 1)]


async def test_online_features_name_an_unknown_view_or_feature(
    client: FeatureServiceStub,
) -> None:
    name = _name("couriers")
    await client.ApplyFeatureView(
        pb.ApplyFeatureViewRequest(spec=view_to_spec(courier_view(name))), metadata=DEV
    )
    entity = pb.EntityRow(keys={"courier_id": pb.Value(int64_value=1)})
    for ref, named in ((f"{name}_x:minutes", f"{name}_x"), (f"{name}:speed", f"{name}:speed")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(features=[ref], entities=[entity]), metadata=VIEWER
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert named in (caught.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as wrong_kind:
        await client.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=[f"{name}:minutes"],
                entities=[pb.EntityRow(keys={"courier_id": pb.Value(string_value="1")})],
            ),
            metadata=VIEWER,
        )
    assert list(field_violations(wrong_kind.value)) == ["entities[0].keys[courier_id]"]
