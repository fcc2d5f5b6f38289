"""Transform expressions: one meaning, whatever path evaluates them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from strata.transforms.durations import format_duration, parse_duration
from strata.transforms.expressions import ExpressionError, compile_expression
from strata.transforms.types import ColumnType

COLUMNS = {"n": ColumnType.INT64, "x": ColumnType.DOUBLE, "s": ColumnType.STRING}
TABLE = pa.table(
    {
        "n": pa.array([7, None, -2], pa.int64()),
        "x": pa.array([0.5, 2.0, None], pa.float64()),
        "s": pa.array(["Ab", None, "c"], pa.string()),
    }
)


@pytest.mark.parametrize(
    ("text", "kind", "values"),
    [
        ("n / 2", ColumnType.DOUBLE, [3.5, None, -1.0]),
        ("n * 2 + 1", ColumnType.INT64, [15, None, -3]),
        ("n + x", ColumnType.DOUBLE, [7.5, None, None]),
        ('lower(s) + "!"', ColumnType.STRING, ["ab!", None, "c!"]),
        ("n > 0 or x > 1", ColumnType.BOOL, [True, True, None]),
        ('"big" if n > 5 else "small"', ColumnType.STRING, ["big", None, "small"]),
        ("coalesce(n, x, 0)", ColumnType.DOUBLE, [7.0, 2.0, -2.0]),
        ("length(s)", ColumnType.INT64, [2, None, 1]),
        ("3", ColumnType.INT64, [3, 3, 3]),
    ],
)
def test_expressions_evaluate_over_arrow_with_null_propagation(
    text: str, kind: ColumnType, values: list[object]
) -> None:
    compiled = compile_expression(text, COLUMNS)
    result = compiled.evaluate(TABLE)
    assert compiled.type is kind
    assert result.type == kind.arrow
    assert result.to_pylist() == values


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("m + 1", "unknown column 'm'"),
        ("s * 2", "needs numbers"),
        ("n < x < 3", "chain comparisons"),
        ("__import__('os')", "not a transform function"),
        ("n.real", "not supported"),
        ("n +", "not an expression"),
        ("None", "not supported"),
        ("n if s else x", "not bool"),
    ],
)
def test_bad_expressions_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        compile_expression(text, COLUMNS)


def test_durations_parse_exactly_and_refuse_what_is_not_one() -> None:
    assert parse_duration("7d") == 7 * 86_400_000_000
    assert parse_duration("90s") == 90_000_000
    assert format_duration(parse_duration("1h") or 0) == "1h"
    assert [parse_duration(text) for text in ("0s", "-1h", "1 week", "1.5h")] == [None] * 4
    assert parse_duration("0s", zero=True) == 0
