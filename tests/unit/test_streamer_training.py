"""The streamer's offline-store layout and training-set request rules, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from strata.core.errors import InvalidArgumentError
from strata.streamer.domain.offline import partition_key, partition_name
from strata.streamer.domain.refs import FeatureRef
from strata.streamer.domain.training import (
    check_labels,
    features_by_view,
    output_folder,
    time_column,
)
from strata.transforms.definition import Column, Feature, FeatureView, TopicSource
from strata.transforms.types import ColumnType

HOUR = datetime(2026, 6, 1, 8, tzinfo=UTC)


def test_a_partition_is_named_by_its_hour_view_version_and_starting_offsets() -> None:
    name = partition_name("couriers", 2, HOUR, {1: 40, 0: 7})
    assert name.startswith("hour=2026-06-01T08/batch=couriers.v2.")
    assert name == partition_name("couriers", 2, HOUR, {0: 7, 1: 40}), "a replay lands it again"
    assert name != partition_name("couriers", 2, HOUR, {0: 8, 1: 40})
    assert name != partition_name("couriers", 3, HOUR, {0: 7, 1: 40})
    assert partition_key("raw.couriers", name) == f"offline/raw.couriers/{name}/part-0.parquet"


def view(key_type: ColumnType = ColumnType.INT64) -> FeatureView:
    return FeatureView(
        name="couriers",
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            "raw.couriers",
            (
                Column("courier_id", key_type),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("minutes", ColumnType.DOUBLE),
            ),
        ),
        features=(Feature("minutes"),),
    )


LABELS = pa.schema(
    [("courier_id", pa.int64()), ("at", pa.timestamp("us", tz="UTC")), ("y", pa.bool_())]
)


def test_labels_with_the_time_and_entity_columns_pass() -> None:
    check_labels(LABELS, "labels.parquet", "at", [view()])


@pytest.mark.parametrize(
    ("schema", "time", "views", "field", "named"),
    [
        (LABELS, "event_time", [view()], "event_time_column", "'event_time'"),
        (
            pa.schema([("courier_id", pa.int64()), ("at", pa.string())]),
            "at",
            [view()],
            "event_time_column",
            "expected a timestamp",
        ),
        (LABELS.remove(0), "at", [view()], "labels_uri", "'courier_id'"),
        (LABELS, "at", [view(ColumnType.STRING)], "labels_uri", "keyed by string"),
    ],
)
def test_labels_lacking_a_column_are_refused_naming_it(
    schema: pa.Schema, time: str, views: list[FeatureView], field: str, named: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_labels(schema, "labels.parquet", time, views)
    assert raised.value.field == field
    assert named in str(raised.value)


def test_the_time_column_defaults_to_event_time() -> None:
    assert time_column("") == "event_time"
    assert time_column("label_time") == "label_time"


def test_the_output_folder_is_the_requested_one_or_a_new_one() -> None:
    assert output_folder("", "abc") == "training_sets/abc"
    assert output_folder("sets/churn/", "abc") == "sets/churn"
    with pytest.raises(InvalidArgumentError) as raised:
        output_folder("sets/../up", "abc")
    assert raised.value.field == "output_uri"


def test_features_are_grouped_by_view_in_request_order() -> None:
    refs = [FeatureRef("b", "x"), FeatureRef("a", "y"), FeatureRef("b", "z")]
    assert dict(features_by_view(refs)) == {"b": ["x", "z"], "a": ["y"]}
