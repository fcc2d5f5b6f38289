"""The skew report's comparison, without I/O.

What a reader of the report relies on: numbers differ only past the stated
tolerance (relative to the batch value, at least absolute), other values differ
unless equal, a null and a value differ; each feature of each model version is
counted on its own with its share, largest and mean absolute difference; an entity
key is split into the items a view's keys are parsed from.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from strata.sdk.client import CommandError
from strata.sdk.skew import (
    TOLERANCE,
    Compared,
    SkewReport,
    differs,
    entity_items,
    parse_time,
    summarize,
)


@pytest.mark.parametrize(
    ("served", "batch", "expected"),
    [
        (1.0, 1.0, False),
        (1.0, 1.0 + TOLERANCE / 2, False),
        (1.0, 1.0 + TOLERANCE * 2, True),
        (1e9, 1e9 + 1e9 * TOLERANCE / 2, False),
        (1e9, 1e9 + 1e9 * TOLERANCE * 2, True),
        (3, 3.0, False),
        (3, 4, True),
        (None, None, False),
        (None, 0.0, True),
        (0.0, None, True),
        ("a", "a", False),
        ("a", "b", True),
        (True, True, False),
        (True, 1, True),
    ],
)
def test_what_differs(served: object, batch: object, expected: bool) -> None:
    assert differs(served, batch) is expected


def test_each_feature_of_each_version_is_summarized_on_its_own() -> None:
    pairs = [
        Compared(1, "v:minutes", 10.0, 10.0),
        Compared(1, "v:minutes", 110.0, 10.0),
        Compared(1, "v:minutes", 12.0, 10.0),
        Compared(1, "v:count", 3, 3),
        Compared(2, "v:minutes", 5.0, 5.0),
        Compared(1, "v:zone", "north", None),
    ]

    found = {(f.feature, f.model_version): f for f in summarize(pairs)}

    minutes = found[("v:minutes", 1)]
    assert (minutes.rows, minutes.differing) == (3, 2)
    assert minutes.share == pytest.approx(2 / 3)
    assert minutes.max_abs_diff == 100.0
    assert minutes.mean_abs_diff == pytest.approx(34.0)
    assert (found[("v:minutes", 2)].differing, found[("v:count", 1)].differing) == (0, 0)
    zone = found[("v:zone", 1)]
    assert (zone.differing, zone.max_abs_diff, zone.mean_abs_diff) == (1, None, None)


def test_the_report_names_only_the_skewed_features() -> None:
    features = summarize([Compared(1, "v:minutes", 1.0, 2.0), Compared(1, "v:count", 3, 3)])
    report = SkewReport("eta", None, datetime.now(UTC), 1, features, TOLERANCE)

    assert [f.feature for f in report.skewed()] == ["v:minutes"]
    assert report.max_share == 1.0


def test_an_entity_key_splits_into_its_items() -> None:
    assert entity_items("courier_id=4,zone=north") == ["courier_id=4", "zone=north"]
    assert entity_items("") == []


def test_since_is_an_iso_time_utc_without_offset_and_anything_else_is_named() -> None:
    assert parse_time("2026-12-01T05:00", "--since") == datetime(2026, 12, 1, 5, tzinfo=UTC)
    with pytest.raises(CommandError, match="--since 'yesterday'"):
        parse_time("yesterday", "--since")
