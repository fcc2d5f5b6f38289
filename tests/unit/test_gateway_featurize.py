"""The plan of a version's feature bindings: refused at load when it cannot fill the model,
and at request time the tensors in binding order with each row's features as served."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest
from google.protobuf import struct_pb2

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import (
    Column,
    DatasetSource,
    Feature,
    FeatureView,
    RequestSource,
    Transform,
)
from strata.transforms.featurize import (
    TensorSpec,
    ViewUse,
    assemble,
    entity_keys,
    plan,
    request_rows,
)
from strata.transforms.online import OnlineValue
from strata.transforms.request import request_features
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
            Column("deliveries", ColumnType.INT64),
            Column("city", ColumnType.STRING),
        ),
    ),
    features=(Feature("deliveries", default=0), Feature("city")),
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
VIEWS = {"couriers": ViewUse(COURIERS, 3), "trips": ViewUse(TRIPS, 1)}
X = TensorSpec("X", "FP32", (-1, 3))
BINDING = ("X", ["couriers:deliveries", "trips:distance_km", "request:hour"])


def _row(courier: int, meters: float, hour: int) -> gpb.PredictRow:
    return gpb.PredictRow(
        entity_keys={"courier_id": fpb.Value(int64_value=courier)},
        features={"meters": fpb.Value(double_value=meters), "hour": fpb.Value(int64_value=hour)},
    )


def test_the_tensor_is_filled_in_binding_order_with_each_rows_features_as_served() -> None:
    bound = plan([BINDING], [X], VIEWS)
    rows = [_row(7, 2500.0, 8), _row(8, 500.0, 9)]
    assert entity_keys(bound, rows) == {"couriers": [(7,), (8,)]}
    computed = {v: request_features(TRIPS, r) for v, r in request_rows(bound, rows).items()}
    online = {
        "couriers": [
            [OnlineValue(12, T0, FeatureStatus.PRESENT)],
            [OnlineValue(0, None, FeatureStatus.NOT_FOUND)],
        ]
    }

    result = assemble(bound, rows, online, computed)

    np.testing.assert_array_equal(result.feeds["X"], [[12, 2.5, 8], [0, 0.5, 9]])
    assert result.feeds["X"].dtype == np.float32
    assert result.served[1]["couriers:deliveries"].status is FeatureStatus.NOT_FOUND
    assert result.served[0]["trips:distance_km"].value == 2.5
    assert result.served[0]["request:hour"].value == 8


def test_a_null_with_no_default_is_nan_in_a_float_tensor() -> None:
    bound = plan([("X", ["couriers:deliveries"])], [TensorSpec("X", "FP32", (-1, 1))], VIEWS)
    online = {"couriers": [[OnlineValue(None, T0, FeatureStatus.PRESENT)]]}
    result = assemble(bound, [_row(7, 1.0, 1)], online, {})
    assert np.isnan(result.feeds["X"][0, 0])


@pytest.mark.parametrize(
    ("bindings", "inputs", "reason"),
    [
        ([("Y", ["request:hour"])], [X], "input 'Y'"),
        ([], [X], "no feature binding"),
        ([("X", ["couriers:nope", "request:a", "request:b"])], [X], "no such feature"),
        ([("X", ["couriers:city", "request:a", "request:b"])], [X], "string"),
        ([("X", ["stores:size", "request:a", "request:b"])], [X], "'stores'"),
        ([("X", ["request:hour"])], [X], "shape [-1, 3]"),
        ([("X", ["hour", "request:a", "request:b"])], [X], "'<view>:<feature>'"),
    ],
)
def test_a_binding_that_cannot_fill_the_model_is_refused_at_load(
    bindings: list[tuple[str, list[str]]], inputs: list[TensorSpec], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        plan(bindings, inputs, VIEWS)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (fpb.Value(string_value="7"), "expected int64_value, got string_value"),
        (fpb.Value(null_value=struct_pb2.NULL_VALUE), "expected int64_value, got null"),
        (None, "missing: feature view 'couriers' is keyed by courier_id (expected int64_value)"),
    ],
)
def test_a_mistyped_or_missing_entity_key_names_the_column_and_the_type(
    key: fpb.Value | None, reason: str
) -> None:
    bound = plan([BINDING], [X], VIEWS)
    good, row = _row(8, 1.0, 1), _row(7, 1.0, 1)
    del row.entity_keys["courier_id"]
    if key is not None:
        row.entity_keys["courier_id"].CopyFrom(key)
    with pytest.raises(InvalidArgumentError) as caught:
        entity_keys(bound, [good, row])
    assert caught.value.field == "rows[1].entity_keys[courier_id]"
    assert reason in caught.value.message
