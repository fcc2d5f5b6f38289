"""A feature view refuses bad declarations with an error naming the view and the field."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

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
from strata.transforms.types import ColumnType

SOURCE = TopicSource(
    "deliveries",
    (
        Column("courier_id", ColumnType.INT64),
        Column("event_time", ColumnType.TIMESTAMP),
        Column("minutes", ColumnType.DOUBLE),
        Column("city", ColumnType.STRING),
    ),
)


def view(**changes: Any) -> FeatureView:
    base: dict[str, Any] = {
        "name": "courier_stats",
        "entities": ("courier_id",),
        "event_time": "event_time",
        "source": SOURCE,
        "transforms": (Transform("hours", "minutes / 60"),),
        "features": (
            Feature(
                "hours_7d", column="hours", aggregation=Aggregation(AggregationFunction.SUM, "7d")
            ),
        ),
        "ttl": "30d",
    }
    base.update(changes)
    return FeatureView(**base)


def refused(**changes: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        view(**changes)
    return caught.value


def test_a_valid_view_resolves_types_windows_and_ttl() -> None:
    resolved = view()
    assert resolved.columns["hours"] is ColumnType.DOUBLE
    (feature,) = resolved.resolved_features
    assert (feature.type, feature.window_us) == (ColumnType.DOUBLE, 7 * 86_400_000_000)
    assert resolved.ttl_us == 30 * 86_400_000_000


def test_unknown_column_in_a_transform_names_the_transform() -> None:
    error = refused(transforms=(Transform("hours", "minutez / 60"),))
    assert error.field == "feature_view[courier_stats].transforms[hours].expression"
    assert "'minutez'" in error.message
    assert "courier_stats" in error.message


def test_unknown_column_of_a_feature_names_the_feature() -> None:
    error = refused(features=(Feature("speed", column="kmh"),))
    assert error.field == "feature_view[courier_stats].features[speed].column"
    assert "'kmh'" in error.message


def test_a_window_that_is_not_a_duration_is_refused() -> None:
    aggregation = Aggregation(AggregationFunction.COUNT, "a week")
    error = refused(features=(Feature("n", aggregation=aggregation),))
    assert error.field == "feature_view[courier_stats].features[n].window"
    assert "'a week' is not a duration" in error.message


def test_an_aggregation_on_a_column_of_the_wrong_type_is_refused() -> None:
    aggregation = Aggregation(AggregationFunction.MEAN, "1d")
    error = refused(features=(Feature("city_mean", column="city", aggregation=aggregation),))
    assert error.field == "feature_view[courier_stats].features[city_mean].column"
    assert "'city' is string" in error.message


def test_an_entity_key_missing_from_the_source_is_refused() -> None:
    error = refused(entities=("driver_id",))
    assert error.field == "feature_view[courier_stats].entities[driver_id]"
    assert "missing from the source" in error.message


def test_a_ttl_shorter_than_a_window_is_refused() -> None:
    error = refused(ttl="1d")
    assert error.field == "feature_view[courier_stats].ttl"
    assert "'hours_7d'" in error.message


def test_a_transform_mixing_types_is_refused() -> None:
    error = refused(transforms=(Transform("hours", "city / 60"),))
    assert error.field == "feature_view[courier_stats].transforms[hours].expression"
    assert "needs numbers" in error.message


def test_a_default_of_the_wrong_type_is_refused() -> None:
    feature = Feature(
        "hours_7d",
        column="hours",
        aggregation=Aggregation(AggregationFunction.SUM, "7d"),
        default="none",
    )
    error = refused(features=(feature,))
    assert error.field == "feature_view[courier_stats].features[hours_7d].default"


def test_an_event_time_that_is_not_a_timestamp_is_refused() -> None:
    error = refused(event_time="city")
    assert error.field == "feature_view[courier_stats].event_time"


def test_request_views_have_no_windows() -> None:
    source = RequestSource(
        (Column("courier_id", ColumnType.INT64), Column("km", ColumnType.DOUBLE))
    )
    aggregation = Aggregation(AggregationFunction.SUM, "1h")
    error = refused(
        source=source,
        event_time="",
        transforms=(),
        features=(Feature("km_1h", column="km", aggregation=aggregation),),
        ttl=None,
    )
    assert error.field == "feature_view[courier_stats].features[km_1h].aggregation"


def test_a_bad_view_name_is_refused() -> None:
    error = refused(name="Courier Stats")
    assert error.field == "feature_view.name"


def test_views_compare_by_their_declaration() -> None:
    assert view() == view()
    assert view() != replace(view(), ttl="31d")
