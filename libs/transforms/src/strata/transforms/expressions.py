"""Row-level transforms as small expressions, evaluated by Arrow compute in every path.

A transform is a text expression over the view's columns, such as
``minutes / 60`` or ``"late" if minutes > 30 else "on_time"``. It is parsed with
Python's own grammar (``ast``), checked against the column types, and compiled
to a function from an Arrow table to an Arrow array made of ``pyarrow.compute``
kernels.

Why this form: the batch path runs it over a whole offline table at once
(vectorised, no Python loop over rows), the streaming path over each batch of
records, and the request-time path over the one row a caller supplies, and all
three call the *same compiled function* on the same engine. There is no second
implementation that could drift (a Python UDF would not be vectorised in batch;
an expression compiled to both SQL and Python would have two semantics to keep
equal: integer division, null propagation, string functions). An expression is
also plain data: it is stored in the ``FeatureViewSpec``, compared for
versioning, and cannot run arbitrary code.

Semantics, the same everywhere: nulls propagate (``and``/``or`` use Kleene
logic); ``/`` is always floating-point division; ``+ - *`` on two integers give
an integer (wrapping on overflow, like Arrow), mixed with a double give a double.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from strata.transforms.types import ColumnType

Evaluate = Callable[[pa.Table], Any]
"""Compiled expression: an Arrow table in, an Arrow array (or scalar) out."""


class ExpressionError(ValueError):
    """An expression does not parse, names an unknown column, or mixes types."""


@dataclass(frozen=True)
class CompiledExpression:
    """An expression checked against its columns, ready to run on Arrow tables."""

    text: str
    type: ColumnType
    columns: frozenset[str]
    _evaluate: Evaluate

    def evaluate(self, table: pa.Table) -> pa.ChunkedArray:
        """The expression's value for every row of ``table``, typed as ``self.type``."""
        result = self._evaluate(table)
        if isinstance(result, pa.Scalar):
            result = pa.repeat(result, table.num_rows)
        if isinstance(result, pa.Array):
            result = pa.chunked_array([result], type=result.type)
        if result.type != self.type.arrow:
            result = pc.cast(result, self.type.arrow)
        return result


def compile_expression(text: str, columns: Mapping[str, ColumnType]) -> CompiledExpression:
    """Parse and type-check ``text`` over ``columns``; raise ExpressionError if it is wrong."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"{text!r} is not an expression: {error.msg}") from None
    used: set[str] = set()
    evaluate, kind = _Compiler(columns, used).compile(tree.body)
    return CompiledExpression(text, kind, frozenset(used), evaluate)


_Node = tuple[Evaluate, ColumnType]

_ARITHMETIC: dict[type[ast.operator], str] = {
    ast.Add: "add",
    ast.Sub: "subtract",
    ast.Mult: "multiply",
    ast.Div: "divide",
}
_COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Eq: "equal",
    ast.NotEq: "not_equal",
    ast.Lt: "less",
    ast.LtE: "less_equal",
    ast.Gt: "greater",
    ast.GtE: "greater_equal",
}
FUNCTIONS = ("abs", "coalesce", "float", "lower", "upper", "length", "hour", "day_of_week")
"""The functions an expression may call."""


class _Compiler:
    def __init__(self, columns: Mapping[str, ColumnType], used: set[str]) -> None:
        self._columns = columns
        self._used = used

    def compile(self, node: ast.expr) -> _Node:
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.Constant):
            return _constant(node.value)
        if isinstance(node, ast.BinOp):
            return self._arithmetic(node)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BoolOp):
            return self._boolean(node)
        if isinstance(node, ast.IfExp):
            return self._choice(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ExpressionError(f"{ast.unparse(node)!r} is not supported in a transform")

    def _name(self, name: str) -> _Node:
        kind = self._columns.get(name)
        if kind is None:
            known = ", ".join(sorted(self._columns)) or "none"
            raise ExpressionError(f"unknown column {name!r} (columns: {known})")
        self._used.add(name)
        return (lambda table: table.column(name)), kind

    def _arithmetic(self, node: ast.BinOp) -> _Node:
        function = _ARITHMETIC.get(type(node.op))
        left, left_type = self.compile(node.left)
        right, right_type = self.compile(node.right)
        if function == "add" and left_type is right_type is ColumnType.STRING:
            return (
                lambda table: pc.binary_join_element_wise(left(table), right(table), ""),
                ColumnType.STRING,
            )
        if function is None or not (left_type.numeric and right_type.numeric):
            raise ExpressionError(
                f"{ast.unparse(node)!r}: {type(node.op).__name__} needs numbers, "
                f"got {left_type.value} and {right_type.value}"
            )
        if function == "divide" or ColumnType.DOUBLE in (left_type, right_type):
            call = getattr(pc, function)
            return (
                lambda table: call(_double(left(table)), _double(right(table))),
                ColumnType.DOUBLE,
            )
        call = getattr(pc, function)
        return (lambda table: call(left(table), right(table))), ColumnType.INT64

    def _unary(self, node: ast.UnaryOp) -> _Node:
        operand, kind = self.compile(node.operand)
        if isinstance(node.op, ast.USub) and kind.numeric:
            return (lambda table: pc.negate(operand(table))), kind
        if isinstance(node.op, ast.Not) and kind is ColumnType.BOOL:
            return (lambda table: pc.invert(operand(table))), kind
        raise ExpressionError(f"{ast.unparse(node)!r}: operator does not apply to {kind.value}")

    def _compare(self, node: ast.Compare) -> _Node:
        if len(node.ops) != 1:
            raise ExpressionError(f"{ast.unparse(node)!r}: chain comparisons with 'and'")
        function = _COMPARISONS.get(type(node.ops[0]))
        left, left_type = self.compile(node.left)
        right, right_type = self.compile(node.comparators[0])
        if function is None:
            raise ExpressionError(f"{ast.unparse(node)!r}: comparison is not supported")
        if left_type is not right_type and not (left_type.numeric and right_type.numeric):
            raise ExpressionError(
                f"{ast.unparse(node)!r}: cannot compare {left_type.value} with {right_type.value}"
            )
        call = getattr(pc, function)
        if left_type is not right_type:
            return (
                lambda table: call(_double(left(table)), _double(right(table))),
                ColumnType.BOOL,
            )
        return (lambda table: call(left(table), right(table))), ColumnType.BOOL

    def _boolean(self, node: ast.BoolOp) -> _Node:
        operands = [self.compile(value) for value in node.values]
        for (_, kind), value in zip(operands, node.values, strict=True):
            if kind is not ColumnType.BOOL:
                raise ExpressionError(f"{ast.unparse(value)!r} is {kind.value}, not bool")
        call = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene

        def evaluate(table: pa.Table) -> Any:
            result = operands[0][0](table)
            for operand, _ in operands[1:]:
                result = call(result, operand(table))
            return result

        return evaluate, ColumnType.BOOL

    def _choice(self, node: ast.IfExp) -> _Node:
        test, test_type = self.compile(node.test)
        body, body_type = self.compile(node.body)
        orelse, orelse_type = self.compile(node.orelse)
        if test_type is not ColumnType.BOOL:
            raise ExpressionError(f"{ast.unparse(node.test)!r} is {test_type.value}, not bool")
        kind = _common(node, body_type, orelse_type)
        return (
            lambda table: pc.if_else(
                test(table), _cast(body(table), kind), _cast(orelse(table), kind)
            ),
            kind,
        )

    def _call(self, node: ast.Call) -> _Node:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in FUNCTIONS or node.keywords:
            raise ExpressionError(
                f"{name!r} is not a transform function (functions: {', '.join(FUNCTIONS)})"
            )
        arguments = [self.compile(argument) for argument in node.args]
        if name == "coalesce":
            if len(arguments) < 2:
                raise ExpressionError("coalesce needs at least two arguments")
            kind = arguments[0][1]
            for _, other in arguments[1:]:
                kind = _common(node, kind, other)
            return (
                lambda table: pc.coalesce(*(_cast(a(table), kind) for a, _ in arguments)),
                kind,
            )
        if len(arguments) != 1:
            raise ExpressionError(f"{name} takes one argument, got {len(arguments)}")
        argument, kind = arguments[0]
        wanted, result, call = _UNARY_FUNCTIONS[name]
        if not wanted(kind):
            raise ExpressionError(f"{name}() does not apply to {kind.value}")
        return (lambda table: call(argument(table))), result or kind


_UNARY_FUNCTIONS: dict[
    str, tuple[Callable[[ColumnType], bool], ColumnType | None, Callable[[Any], Any]]
] = {
    "abs": (lambda kind: kind.numeric, None, pc.abs),
    "float": (lambda kind: kind.numeric, ColumnType.DOUBLE, lambda value: _double(value)),
    "lower": (lambda kind: kind is ColumnType.STRING, None, pc.utf8_lower),
    "upper": (lambda kind: kind is ColumnType.STRING, None, pc.utf8_upper),
    "length": (
        lambda kind: kind is ColumnType.STRING,
        ColumnType.INT64,
        lambda value: pc.cast(pc.utf8_length(value), pa.int64()),
    ),
    "hour": (
        lambda kind: kind is ColumnType.TIMESTAMP,
        ColumnType.INT64,
        lambda value: pc.hour(value),
    ),
    "day_of_week": (
        lambda kind: kind is ColumnType.TIMESTAMP,
        ColumnType.INT64,
        lambda value: pc.day_of_week(value),
    ),
}


def _constant(value: object) -> _Node:
    if isinstance(value, bool):
        scalar, kind = pa.scalar(value, pa.bool_()), ColumnType.BOOL
    elif isinstance(value, int):
        scalar, kind = pa.scalar(value, pa.int64()), ColumnType.INT64
    elif isinstance(value, float):
        scalar, kind = pa.scalar(value, pa.float64()), ColumnType.DOUBLE
    elif isinstance(value, str):
        scalar, kind = pa.scalar(value, pa.string()), ColumnType.STRING
    else:
        raise ExpressionError(f"literal {value!r} is not supported (numbers, text, True/False)")
    return (lambda table: scalar), kind


def _common(node: ast.expr, left: ColumnType, right: ColumnType) -> ColumnType:
    if left is right:
        return left
    if left.numeric and right.numeric:
        return ColumnType.DOUBLE
    raise ExpressionError(f"{ast.unparse(node)!r} mixes {left.value} and {right.value}")


def _double(value: Any) -> Any:
    return pc.cast(value, pa.float64())


def _cast(value: Any, kind: ColumnType) -> Any:
    return pc.cast(value, kind.arrow)
