"""The feature SDK: a view declared Feast/Tecton-style compiles to the one definition.

What users rely on: the declaration becomes the ``FeatureViewSpec`` the streamer
stores, through ``strata.transforms`` (so it validates the same way, naming the
view and field); a file applying two different views under one name is refused
naming that name, while one view reached by two names is applied once; entity
keys typed on the command line are checked against the view's keys.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from strata.api.features.v1 import features_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.sdk.features import (
    Aggregate,
    Entity,
    FeatureView,
    Field,
    Float64,
    Int64,
    Latest,
    Request,
    String,
    Timestamp,
    Topic,
)
from strata.sdk.features.loading import load_feature_views
from strata.sdk.features.values import entity_row, show_value
from strata.transforms.spec import view_from_spec, view_to_spec

COURIER = Entity("courier", join_keys=("courier_id",))
DELIVERIES = Topic(
    "raw.deliveries",
    schema=[
        Field("courier_id", Int64),
        Field("event_time", Timestamp),
        Field("minutes", Float64),
        Field("city", String),
    ],
)


def courier_stats(ttl: str = "7d", window: str | timedelta = "7d") -> FeatureView:
    return FeatureView(
        "courier_stats",
        entities=[COURIER],
        source=DELIVERIES,
        event_time="event_time",
        transforms={"hours": "minutes / 60"},
        features=[
            Aggregate("count", window="1h", name="deliveries_1h"),
            Aggregate("sum", window=window, column="hours"),
            Latest("city", default="unknown"),
        ],
        ttl=ttl,
        owner="couriers-team",
        allowed_groups=["ops"],
        labels={"tier": "gold"},
    )


def test_a_view_compiles_to_the_spec_the_streamer_stores() -> None:
    spec = courier_stats().to_spec()

    assert spec.name == "courier_stats"
    assert spec.source.topic == "raw.deliveries"
    assert [(f.name, f.type) for f in spec.entities] == [("courier_id", pb.VALUE_TYPE_INT64)]
    assert spec.event_time_column == "event_time"
    assert [(t.name, t.expression) for t in spec.transforms] == [("hours", "minutes / 60")]
    assert spec.ttl.ToTimedelta() == timedelta(days=7)
    assert (spec.owner, list(spec.allowed_groups), dict(spec.labels)) == (
        "couriers-team",
        ["ops"],
        {"tier": "gold"},
    )
    by_name = {f.name: f for f in spec.features}
    assert list(by_name) == ["deliveries_1h", "hours_sum_7d", "city"]
    count = by_name["deliveries_1h"].aggregation
    assert (count.function, count.window.ToTimedelta()) == (
        pb.AGGREGATION_FUNCTION_COUNT,
        timedelta(hours=1),
    )
    assert by_name["hours_sum_7d"].type == pb.VALUE_TYPE_DOUBLE
    assert not by_name["city"].HasField("aggregation")
    assert by_name["city"].default_value.string_value == "unknown"
    assert view_to_spec(view_from_spec(spec)) == spec


def test_a_timedelta_window_names_the_feature_by_its_shortest_spelling() -> None:
    spec = courier_stats(window=timedelta(hours=2)).to_spec()

    assert spec == courier_stats(window="2h").to_spec()


def test_a_request_view_declares_its_columns() -> None:
    view = FeatureView(
        "order_request",
        entities=[Entity("order_id")],
        source=Request([Field("order_id", String), Field("amount", Float64)]),
        transforms={"large": "amount > 100"},
        features=[Latest("large", default=False)],
    )

    spec = view.to_spec()

    assert spec.source.WhichOneof("kind") == "request"
    assert [c.name for c in spec.source.request.columns] == ["order_id", "amount"]
    assert spec.features[0].type == pb.VALUE_TYPE_BOOL


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ttl": "1d"}, "feature_view[courier_stats].ttl"),
        ({"window": "7 days"}, "feature_view[courier_stats].features[hours_sum].window"),
    ],
)
def test_an_invalid_view_is_refused_naming_the_view_and_field(
    change: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        courier_stats(**change)

    assert caught.value.field == field


def test_an_unknown_aggregation_is_refused_naming_the_feature() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        FeatureView(
            "bad_view",
            entities=[COURIER],
            source=DELIVERIES,
            event_time="event_time",
            features=[Aggregate("median", window="1d", column="minutes")],
        )

    assert caught.value.field == "feature_view[bad_view].features[minutes].function"
    assert "'median' is not one of count, sum, mean, min, max, last" in caught.value.message


def test_an_entity_key_missing_from_the_source_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        FeatureView(
            "bad_view",
            entities=[Entity("driver")],
            source=DELIVERIES,
            event_time="event_time",
            features=[Latest("minutes")],
        )

    assert caught.value.field == "feature_view[bad_view].entities[driver]"


FILE = """
from strata.sdk.features import *  # noqa: F403

source = Topic("raw.x", [Field("k", Int64), Field("t", Timestamp), Field("v", Int64)])
first = FeatureView("{first}", entities=[Entity("k")], source=source, event_time="t",
                    features=[Latest("v")])
alias = first
second = FeatureView("{second}", entities=[Entity("k")], source=source, event_time="t",
                     features=[{features}])
"""


def test_a_file_yields_each_view_once(tmp_path: Path) -> None:
    path = tmp_path / "views.py"
    path.write_text(
        FILE.format(
            first="a_view", second="b_view", features='Aggregate("sum", window="1h", column="v")'
        )
    )

    views = load_feature_views(path)

    assert [view.name for view in views] == ["a_view", "b_view"]


def test_the_same_definition_twice_is_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "views.py"
    path.write_text(FILE.format(first="a_view", second="a_view", features='Latest("v")'))

    views = load_feature_views(path)

    assert len(views) == 1


def test_two_definitions_of_one_name_are_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "views.py"
    path.write_text(FILE.format(first="a_view", second="a_view", features='Latest("v", default=0)'))

    with pytest.raises(InvalidArgumentError) as caught:
        load_feature_views(path)

    assert caught.value.field == str(path)
    assert "'a_view' is declared twice with different definitions" in caught.value.message


def test_a_file_without_views_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")

    with pytest.raises(InvalidArgumentError, match="declares no FeatureView"):
        load_feature_views(path)


def test_entity_options_are_typed_by_the_view() -> None:
    spec = courier_stats().to_spec()

    row = entity_row(spec, ["courier_id=42"])

    assert row.keys["courier_id"].int64_value == 42
    with pytest.raises(InvalidArgumentError, match="expected an integer, got 'x'"):
        entity_row(spec, ["courier_id=x"])
    with pytest.raises(InvalidArgumentError, match="no entity key 'driver'"):
        entity_row(spec, ["driver=1"])
    with pytest.raises(InvalidArgumentError, match="needs courier_id"):
        entity_row(spec, [])


def test_values_print_as_people_read_them() -> None:
    assert show_value(pb.Value()) == "null"
    assert show_value(pb.Value(double_value=1.5)) == "1.5"
    assert show_value(pb.Value(string_value="ann")) == "ann"
