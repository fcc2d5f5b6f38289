"""A view survives the trip through FeatureViewSpec; a spec that lies about types is refused."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from strata.api.features.v1 import features_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    RequestSource,
    TopicSource,
    Transform,
)
from strata.transforms.spec import view_from_spec, view_to_spec
from strata.transforms.types import ColumnType

VIEW = FeatureView(
    name="courier_stats",
    entities=("courier_id",),
    event_time="event_time",
    source=TopicSource(
        "deliveries",
        (
            Column("courier_id", ColumnType.INT64),
            Column("event_time", ColumnType.TIMESTAMP),
            Column("minutes", ColumnType.DOUBLE),
        ),
    ),
    transforms=(Transform("late", "minutes > 30"),),
    features=(
        Feature("deliveries_7d", aggregation=Aggregation(AggregationFunction.COUNT, "7d")),
        Feature(
            "minutes_mean_1d",
            column="minutes",
            aggregation=Aggregation(AggregationFunction.MEAN, "1d"),
            default=-1.0,
        ),
        Feature("late", default=False),
    ),
    ttl="30d",
    allowed_lateness="10m",
    owner="ops",
    allowed_groups=("dispatch",),
    labels={"team": "ops"},
)


def test_a_view_round_trips_through_its_spec() -> None:
    spec = view_to_spec(VIEW)
    again = view_from_spec(spec)
    assert view_to_spec(again) == spec
    assert again.resolved_features == VIEW.resolved_features
    assert (again.ttl_us, again.lateness_us) == (VIEW.ttl_us, VIEW.lateness_us)
    assert spec.source.topic == "deliveries"
    assert [f.type for f in spec.features] == [
        pb.VALUE_TYPE_INT64,
        pb.VALUE_TYPE_DOUBLE,
        pb.VALUE_TYPE_BOOL,
    ]
    assert spec.features[1].aggregation.window.ToSeconds() == 86_400
    assert spec.features[1].default_value.double_value == -1.0


def test_a_request_view_round_trips() -> None:
    view = FeatureView(
        name="quote",
        entities=("rider",),
        source=RequestSource((Column("rider", ColumnType.STRING), Column("km", ColumnType.DOUBLE))),
        transforms=(Transform("fare", "2.5 + km * 1.5"),),
        features=(Feature("fare"),),
    )
    spec = view_to_spec(view)
    assert spec.source.WhichOneof("kind") == "request"
    assert view_to_spec(view_from_spec(spec)) == spec


def test_a_declared_type_that_differs_from_the_computed_one_is_refused() -> None:
    spec = view_to_spec(VIEW)
    spec.features[0].type = pb.VALUE_TYPE_DOUBLE
    with pytest.raises(InvalidArgumentError) as caught:
        view_from_spec(spec)
    assert caught.value.field == "feature_view[courier_stats].features[deliveries_7d].type"


def test_a_zero_window_is_not_a_duration() -> None:
    spec = view_to_spec(VIEW)
    spec.features[0].aggregation.window.CopyFrom(Duration())
    with pytest.raises(InvalidArgumentError) as caught:
        view_from_spec(spec)
    assert caught.value.field == "feature_view[courier_stats].features[deliveries_7d].window"


def test_code_bundle_transforms_are_refused_by_name() -> None:
    spec = view_to_spec(VIEW)
    spec.transform = "pkg.mod:fn"
    with pytest.raises(InvalidArgumentError) as caught:
        view_from_spec(spec)
    assert caught.value.field == "feature_view[courier_stats].transform"


def test_an_unsupported_column_type_is_named() -> None:
    spec = view_to_spec(VIEW)
    spec.source.columns[2].type = pb.VALUE_TYPE_FLOAT_LIST
    with pytest.raises(InvalidArgumentError) as caught:
        view_from_spec(spec)
    assert caught.value.field == "feature_view[courier_stats].source.columns[minutes]"
