"""The batch path answers point in time, hand-computed: no future rows, TTL, lateness, defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.core.errors import InvalidArgumentError
from strata.transforms.batch import Rules, feature_values, rules_needed
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    DatasetSource,
    Feature,
    FeatureView,
    RequestSource,
    Transform,
)
from strata.transforms.request import request_features
from strata.transforms.types import ColumnType

T0 = datetime(2026, 5, 4, 12, tzinfo=UTC)
F = AggregationFunction


def hours(value: float) -> datetime:
    return T0 + timedelta(hours=value)


VIEW = FeatureView(
    name="rides",
    entities=("rider",),
    event_time="at_time",
    source=DatasetSource(
        "rides",
        (
            Column("rider", ColumnType.STRING),
            Column("at_time", ColumnType.TIMESTAMP),
            Column("km", ColumnType.DOUBLE),
        ),
    ),
    transforms=(Transform("long", "km >= 10"),),
    features=(
        Feature("rides_2h", aggregation=Aggregation(F.COUNT, "2h")),
        Feature("km_2h", column="km", aggregation=Aggregation(F.SUM, "2h")),
        Feature("km_max_2h", column="km", aggregation=Aggregation(F.MAX, "2h"), default=0.0),
        Feature("long", default=False),
    ),
    ttl="3h",
    allowed_lateness="1h",
)

ROWS = pa.table(
    {
        "rider": ["ann", "ann", "ann", "bob", "ann", "ann"],
        "at_time": [hours(0), hours(1), hours(1), hours(0), hours(-0.5), hours(5)],
        "km": [4.0, 12.0, 12.0, 3.0, 7.0, 1.0],
    }
)
"""Arrival order: ann's 1h ride twice (a replay), ann's -0.5h ride 1.5h behind her
latest (beyond the 1h lateness: dropped), ann's 5h ride (after every read below)."""


def read(riders: list[str], times: list[datetime]) -> list[tuple[str, dict[str, object]]]:
    spine = pa.table({"rider": riders, "at": times})
    result = feature_values(VIEW, ROWS, spine)
    return list(zip(result.statuses.to_pylist(), result.values.to_pylist(), strict=True))


def test_values_are_as_of_the_read_time_never_later() -> None:
    assert read(["ann", "ann"], [hours(0.5), hours(2.5)]) == [
        ("present", {"rides_2h": 1, "km_2h": 4.0, "km_max_2h": 4.0, "long": False}),
        ("present", {"rides_2h": 1, "km_2h": 12.0, "km_max_2h": 12.0, "long": True}),
    ]


def test_the_window_end_is_inclusive_and_its_start_exclusive() -> None:
    assert read(["ann", "ann"], [hours(1), hours(2)]) == [
        ("present", {"rides_2h": 2, "km_2h": 16.0, "km_max_2h": 12.0, "long": True}),
        ("present", {"rides_2h": 1, "km_2h": 12.0, "km_max_2h": 12.0, "long": True}),
    ]


def test_expired_and_missing_entities_get_the_defaults() -> None:
    defaults = {"rides_2h": None, "km_2h": None, "km_max_2h": 0.0, "long": False}
    assert read(["ann", "bob", "cyd", "ann"], [hours(4), hours(3), hours(1), hours(-1)]) == [
        ("expired", defaults),
        ("expired", defaults),
        ("not_found", defaults),
        ("not_found", defaults),
    ]


def test_the_event_time_is_that_of_the_latest_row() -> None:
    spine = pa.table({"rider": ["ann", "cyd"], "at": [hours(2.5), hours(2.5)]})
    result = feature_values(VIEW, ROWS, spine)
    assert result.event_times.to_pylist() == [hours(1), None]


def test_an_arrival_column_orders_the_rows() -> None:
    # Given arrival order, the -0.5h ride came first: it is no longer late.
    rows = ROWS.append_column("offset", pa.array([1, 2, 3, 4, 0, 5]))
    spine = pa.table({"rider": ["ann"], "at": [hours(0.5)]})
    result = feature_values(VIEW, rows, spine, arrival="offset")
    assert result.values.column("rides_2h").to_pylist() == [2]


LAST_VIEW = FeatureView(
    name="rides_last",
    entities=("rider",),
    event_time="at_time",
    source=VIEW.source,
    transforms=VIEW.transforms,
    features=(
        *VIEW.features,
        Feature("km_last_2h", column="km", aggregation=Aggregation(F.LAST, "2h")),
        Feature("km"),
    ),
    ttl="3h",
    allowed_lateness="1h",
)


def _events(riders: list[str], times: list[float], arrivals: list[int]) -> pa.Table:
    return pa.table(
        {
            "rider": riders,
            "at_time": [hours(t) for t in times],
            "km": [float(i) for i in range(len(times))],
            "__arrival": pa.array(arrivals, pa.int64()),
        }
    )


@pytest.mark.parametrize(
    ("times", "arrivals", "rules"),
    [
        ([0, 1, 2, 3], [0, 1, 2, 3], Rules(lateness=False, duplicates_and_ties=False)),
        ([0, 1, 1, 3], [0, 1, 2, 3], Rules(lateness=False, duplicates_and_ties=True)),
        ([0, 2, 1, 3], [0, 1, 2, 3], Rules(lateness=True, duplicates_and_ties=True)),
        ([0, 1, 2, 3], [0, 2, 1, 3], Rules(lateness=True, duplicates_and_ties=False)),
        ([0, 1, 2, 3], [0, 1, 1, 3], Rules(lateness=True, duplicates_and_ties=False)),
    ],
)
def test_a_rule_pass_is_skipped_only_when_the_row_order_proves_it_changes_nothing(
    times: list[float], arrivals: list[int], rules: Rules
) -> None:
    events = _events(["ann", "bob", "ann", "bob"], times, arrivals)
    assert rules_needed(VIEW, events) == rules


SLOTS = st.integers(min_value=0, max_value=12)
"""Event times on a half-hour grid, so that ties, duplicates and late rows happen."""


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from(["ann", "bob"]), SLOTS, st.sampled_from([1.0, 12.0]))),
    in_time_order=st.booleans(),
    reads=st.lists(st.tuples(st.sampled_from(["ann", "bob", "cyd"]), SLOTS), min_size=1),
)
def test_the_answer_is_the_same_with_the_rule_passes_skipped_or_run(
    rows: list[tuple[str, int, float]], in_time_order: bool, reads: list[tuple[str, int]]
) -> None:
    # The same rows in the same arrival order, once in table order (passes skipped
    # when the order allows) and once reversed with an arrival column (never skipped).
    if in_time_order:
        rows = sorted(rows, key=lambda row: row[1])
    table = pa.table(
        {
            "rider": pa.array([rider for rider, _, _ in rows], pa.string()),
            "at_time": pa.array(
                [hours(slot / 2) for _, slot, _ in rows], pa.timestamp("us", "UTC")
            ),
            "km": pa.array([km for _, _, km in rows], pa.float64()),
        }
    )
    reversed_ = table.append_column("offset", pa.array(range(table.num_rows), pa.int64())).take(
        pa.array(reversed(range(table.num_rows)), pa.int64())
    )
    spine = pa.table(
        {"rider": [rider for rider, _ in reads], "at": [hours(slot / 2) for _, slot in reads]}
    )
    skipped = feature_values(LAST_VIEW, table, spine)
    run = feature_values(LAST_VIEW, reversed_, spine, arrival="offset")
    assert skipped.values.to_pylist() == run.values.to_pylist()
    assert skipped.statuses.to_pylist() == run.statuses.to_pylist()
    assert skipped.event_times.to_pylist() == run.event_times.to_pylist()


def test_a_spine_without_the_entity_column_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        feature_values(VIEW, ROWS, pa.table({"at": [hours(1)]}))
    assert caught.value.field == "spine.rider"


def test_rows_lacking_a_source_column_are_refused() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        feature_values(VIEW, ROWS.drop_columns(["km"]), pa.table({"rider": ["ann"], "at": [T0]}))
    assert caught.value.field == "feature_view[rides].source.columns[km]"


def test_request_time_features_apply_the_transforms_to_supplied_values() -> None:
    quote = FeatureView(
        name="quote",
        entities=("rider",),
        source=RequestSource((Column("rider", ColumnType.STRING), Column("km", ColumnType.DOUBLE))),
        transforms=(Transform("long", "km >= 10"), Transform("fare", "2.5 + km * 1.5")),
        features=(Feature("long"), Feature("fare", default=0.0)),
    )
    assert request_features(
        quote, [{"rider": "ann", "km": 10.0}, {"rider": "bob", "km": None}]
    ) == [
        {"long": True, "fare": 17.5},
        {"long": None, "fare": 0.0},
    ]
