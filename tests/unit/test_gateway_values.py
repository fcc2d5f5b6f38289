"""Model outputs written into the reply's ``Value`` messages, one row's slice at a time."""

from __future__ import annotations

import numpy as np
import pytest

from strata.gateway.values import output_value


@pytest.mark.parametrize(
    ("row", "kind", "values"),
    [
        (np.array(2.5, dtype=np.float32), "double_value", 2.5),
        (np.array(7, dtype=np.int64), "int64_value", 7),
        (np.array(True), "bool_value", True),
        (np.array([0.25, 1.5], dtype=np.float32), "float_list_value", [0.25, 1.5]),
        (np.array([[0.25], [1.5]], dtype=np.float16), "float_list_value", [0.25, 1.5]),
        (np.array([0.1, 2.0]), "double_list_value", [0.1, 2.0]),
        (np.array([3, 4], dtype=np.int32), "int64_list_value", [3, 4]),
        (np.array([5], dtype=np.uint8), "int64_list_value", [5]),
        (np.array([True, False]), "bool_list_value", [True, False]),
    ],
)
def test_each_row_becomes_the_value_of_its_kind(row: np.ndarray, kind: str, values: object) -> None:
    value = output_value(row)
    assert value.WhichOneof("kind") == kind
    held = getattr(value, kind)
    assert (list(held.values) if kind.endswith("_list_value") else held) == values


def test_an_empty_vector_is_an_empty_list_not_an_unset_value() -> None:
    value = output_value(np.zeros((0,), dtype=np.float32))
    assert value.WhichOneof("kind") == "float_list_value"
    assert list(value.float_list_value.values) == []
