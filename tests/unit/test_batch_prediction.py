"""The pure parts of batch prediction: partition rows as Predict rows, output columns, and
errors that name the partition's row and column."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from strata.api.features.v1 import features_pb2 as fpb
from strata.sdk.models.batch import _column, _requests, _row_field
from strata.transforms.definition import (
    Column,
    DatasetSource,
    Feature,
    FeatureView,
    RequestSource,
    Transform,
)
from strata.transforms.featurize import TensorSpec, ViewUse, featurize, plan
from strata.transforms.online import OnlineValue
from strata.transforms.spec import value_of
from strata.transforms.types import ColumnType, FeatureStatus

T0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
COURIERS = FeatureView(
    name="couriers",
    entities=("courier_id",),
    event_time="event_time",
    source=DatasetSource(
        "couriers",
        (
            Column("courier_id", ColumnType.INT64),
            Column("event_time", ColumnType.TIMESTAMP),
            Column("minutes", ColumnType.DOUBLE),
        ),
    ),
    features=(Feature("minutes", default=-1.0),),
)
TRIPS = FeatureView(
    name="trips",
    entities=("courier_id",),
    source=RequestSource(
        (Column("courier_id", ColumnType.INT64), Column("meters", ColumnType.DOUBLE))
    ),
    transforms=(Transform("km", "meters / 1000"),),
    features=(Feature("distance_km", column="km"),),
)
PLAN = plan(
    [("X", ["couriers:minutes", "trips:distance_km", "request:hour"])],
    [TensorSpec("X", "FP32", (-1, 3))],
    {"couriers": ViewUse(COURIERS, 1), "trips": ViewUse(TRIPS, 2)},
)


def test_a_partition_row_becomes_the_predict_row_a_client_would_send() -> None:
    rows = pa.table(
        {
            "courier_id": pa.array([7, 8], pa.int64()),
            "event_time": pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
            "meters": [1500.0, 250.0],
            "hour": pa.array([9, 23], pa.int64()),
        }
    )
    first, second = _requests(PLAN, rows, "event_time")

    assert dict(first.entity_keys) == {"courier_id": fpb.Value(int64_value=7)}
    assert dict(first.features) == {
        "meters": fpb.Value(double_value=1500.0),
        "hour": fpb.Value(int64_value=9),
    }
    stored = {"couriers": [[OnlineValue(12.5, None, FeatureStatus.PRESENT)]] * 2}
    tensor = featurize(PLAN, [first, second], stored).feeds["X"]
    assert tensor.dtype == np.float32
    assert tensor.tolist() == [[12.5, 1.5, 9.0], [12.5, 0.25, 23.0]]


def test_values_keep_their_kind_so_keys_are_typed_as_the_view_declares() -> None:
    assert value_of(None) == fpb.Value()
    assert value_of(True) == fpb.Value(bool_value=True)
    assert value_of(3) == fpb.Value(int64_value=3)
    assert value_of(2.5) == fpb.Value(double_value=2.5)
    assert value_of("a") == fpb.Value(string_value="a")
    assert value_of(T0).timestamp_value.ToDatetime(tzinfo=UTC) == T0


def test_outputs_are_a_scalar_or_a_fixed_size_list_per_row() -> None:
    assert _column(np.array([1.0, 2.0], np.float32)).to_pylist() == [1.0, 2.0]
    vectors = _column(np.array([[1, 2], [3, 4], [5, 6]], np.int64))
    assert vectors.type == pa.list_(pa.int64(), 2)
    assert vectors.to_pylist() == [[1, 2], [3, 4], [5, 6]]


def test_a_predict_field_is_named_as_the_partitions_row_and_column() -> None:
    assert _row_field("rows[3].features[meters]") == "row 3, column 'meters'"
    assert _row_field("rows[0].entity_keys[courier_id]") == "row 0, column 'courier_id'"
    assert _row_field("rows[12]") == "row 12"
    assert _row_field("model_name") == "model_name"
