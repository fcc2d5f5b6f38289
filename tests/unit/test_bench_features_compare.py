"""The feature store benchmark's pure parts: its value check and its generated data.

The benchmark claims "same values" only when ``compare`` says so, and its
point-in-time comparison is only fair when the generated rows leave no tie for
an engine to settle its own way; these tests hold both to that.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.features.compare import compare
from bench.features.data import ENTITY, feature_rows, labels, online_rows

FEATURES = ("trips", "rating")


def _table(ids: list[int], trips: list[int | None], rating: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "label_id": pa.array(ids, pa.int64()),
            "trips": pa.array(trips, pa.int64()),
            "rating": pa.array(rating, pa.float64()),
        }
    )


def test_the_same_values_in_another_row_order_are_identical() -> None:
    ours = _table([0, 1, 2], [5, None, 7], [1.5, None, 2.0])
    theirs = _table([2, 0, 1], [7, 5, None], [2.0, 1.5, None])

    result = compare(ours, theirs, FEATURES)

    assert result.identical
    assert result.differing == {"trips": 0, "rating": 0}


def test_a_changed_value_and_a_null_against_a_value_differ() -> None:
    ours = _table([0, 1, 2], [5, None, 7], [1.5, 3.0, 2.0])
    theirs = _table([0, 1, 2], [5, 4, 7], [1.5, 3.0, 2.25])

    result = compare(ours, theirs, FEATURES)

    assert not result.identical
    assert result.differing == {"trips": 1, "rating": 1}


def test_integers_that_came_back_as_floats_compare_by_value() -> None:
    ours = _table([0, 1], [5, None], [1.0, None])
    theirs = pa.table({"label_id": [1, 0], "trips": [None, 5.0], "rating": [None, 1.0]})

    assert compare(ours, theirs, FEATURES).identical


def test_labels_left_out_or_repeated_by_the_peer_are_counted() -> None:
    ours = _table([0, 1, 2, 3], [5, None, 7, 8], [1.5, None, 2.0, 1.0])
    theirs = _table([0, 2, 2, 9], [5, 7, 7, 1], [1.5, 2.0, 2.0, 1.0])

    result = compare(ours, theirs, FEATURES)

    assert not result.identical
    assert result.missing == 2
    assert result.missing_null == 1
    assert result.extra == 2
    assert result.differing == {"trips": 0, "rating": 0}


def test_training_rows_rise_in_distinct_event_times_and_repeat_with_the_seed() -> None:
    rows = feature_rows(50_000, 100, np.random.default_rng(7))
    again = feature_rows(50_000, 100, np.random.default_rng(7))

    times = pc.cast(rows.column("event_time"), pa.int64()).to_numpy()
    assert bool(np.all(np.diff(times) > 0))
    assert rows.equals(again)
    assert set(rows.column(ENTITY).to_pylist()) <= set(range(100))


def test_labels_include_drivers_without_rows_and_online_rows_one_per_driver() -> None:
    asked = labels(10_000, 100, np.random.default_rng(7))
    served = online_rows(20, datetime.now(UTC), np.random.default_rng(7))

    assert asked.column("label_id").to_pylist() == list(range(10_000))
    assert max(asked.column(ENTITY).to_pylist()) >= 100
    assert served.column(ENTITY).to_pylist() == list(range(20))
