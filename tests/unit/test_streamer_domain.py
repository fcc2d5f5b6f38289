"""The streamer's rules: who reads a view, when an apply is a new version, feature
references, and which raw events fit a view's source columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from strata.api.features.v1.features_pb2 import FeatureViewSpec
from strata.core.errors import InvalidArgumentError, PermissionDeniedError
from strata.core.versions import next_version, spec_sha256
from strata.streamer.domain.access import check_read, may_read
from strata.streamer.domain.raw_events import RawEventError, decode
from strata.streamer.domain.refs import FeatureRef, parse_refs, views_of
from strata.transforms.definition import Column, Feature, FeatureView, TopicSource
from strata.transforms.types import ColumnType

VIEW = FeatureView(
    name="couriers",
    entities=("courier_id",),
    event_time="event_time",
    source=TopicSource(
        "raw.couriers",
        (
            Column("courier_id", ColumnType.INT64),
            Column("event_time", ColumnType.TIMESTAMP),
            Column("minutes", ColumnType.DOUBLE),
            Column("city", ColumnType.STRING),
            Column("rush", ColumnType.BOOL),
        ),
    ),
    features=(Feature("minutes"),),
)


def test_an_open_view_is_read_by_anyone_and_a_restricted_one_by_its_groups() -> None:
    assert may_read([], ["viewer"])
    assert may_read(["fraud"], ["viewer", "fraud"])
    assert not may_read(["fraud"], ["viewer", "developer"])
    assert may_read(["fraud"], ["admin"])
    with pytest.raises(PermissionDeniedError, match=r"'payments'.*fraud"):
        check_read("payments", ["fraud"], ["viewer"])


def test_identical_specs_keep_the_version_and_changed_ones_get_the_next() -> None:
    spec = FeatureViewSpec(name="couriers", labels={"b": "2", "a": "1"})
    same = FeatureViewSpec(name="couriers", labels={"a": "1", "b": "2"})
    changed = FeatureViewSpec(name="couriers", labels={"a": "1"})
    assert spec_sha256(spec) == spec_sha256(same)
    assert next_version(None, None, spec_sha256(spec)).version == 1
    assert next_version(3, spec_sha256(spec), spec_sha256(same)) == next_version(3, "x", "x")
    assert not next_version(3, spec_sha256(spec), spec_sha256(same)).changed
    outcome = next_version(3, spec_sha256(spec), spec_sha256(changed))
    assert (outcome.version, outcome.changed) == (4, True)


def test_feature_references_name_view_and_feature() -> None:
    refs = parse_refs(["a:x", "b:y", "a:z"])
    assert refs[0] == FeatureRef("a", "x")
    assert views_of(refs) == ["a", "b"]
    for bad in ("a", ":x", "a:", "a:b:c"):
        with pytest.raises(InvalidArgumentError) as caught:
            parse_refs(["a:x", bad])
        assert caught.value.field == "features[1]"
    with pytest.raises(InvalidArgumentError):
        parse_refs([])


def test_a_raw_event_is_typed_by_the_source_columns() -> None:
    row = decode(
        VIEW,
        b'{"courier_id": 7, "event_time": "2026-06-01T08:00:00Z", "minutes": 3,'
        b' "city": null, "rush": true, "extra": [1]}',
    )
    assert row == {
        "courier_id": 7,
        "event_time": datetime(2026, 6, 1, 8, tzinfo=UTC),
        "minutes": 3.0,
        "city": None,
        "rush": True,
    }


GOOD = {
    "courier_id": 7,
    "event_time": "2026-06-01T08:00:00Z",
    "minutes": 1,
    "city": "a",
    "rush": False,
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"courier_id": None}, "column 'courier_id' is null"),
        ({"event_time": None}, "column 'event_time' is null"),
        ({"courier_id": "7"}, "'courier_id' expected an integer"),
        ({"courier_id": True}, "'courier_id' expected an integer"),
        ({"minutes": "ten"}, "'minutes' expected a number"),
        ({"city": 3}, "'city' expected a string"),
        ({"rush": 1}, "'rush' expected true or false"),
        ({"event_time": "2026-06-01T08:00:00"}, "'event_time' expected an RFC 3339 time"),
        ({"event_time": "yesterday"}, "'event_time' expected an RFC 3339 time"),
    ],
)
def test_a_raw_event_that_does_not_fit_is_refused_with_the_reason(
    change: dict[str, object], reason: str
) -> None:
    decode(VIEW, json.dumps(GOOD).encode())
    with pytest.raises(RawEventError, match=reason):
        decode(VIEW, json.dumps({**GOOD, **change}).encode())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not a JSON document"),
        (None, "not a JSON document"),
        (b"[1]", "expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "city"}).encode(), "'city' is missing"),
    ],
)
def test_a_raw_event_that_is_no_row_is_refused_with_the_reason(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(RawEventError, match=reason):
        decode(VIEW, value)
