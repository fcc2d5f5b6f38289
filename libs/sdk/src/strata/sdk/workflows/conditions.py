"""Task conditions: CEL expressions (github.com/google/cel-spec) over ``params`` and
``outputs``, compiled with cel-python so that a typo fails at declaration.
"""

from __future__ import annotations

import celpy
from celpy.celparser import CELParseError

from strata.core.errors import InvalidArgumentError


def check_condition(expression: str, field: str) -> None:
    """Raise InvalidArgumentError naming ``field`` unless ``expression`` compiles."""
    try:
        celpy.Environment().compile(expression)
    except CELParseError as error:
        raise InvalidArgumentError(field, describe(expression, error)) from None


def describe(expression: str, error: CELParseError) -> str:
    """One line saying where the expression stops making sense."""
    column = getattr(error, "column", None)
    where = f" at column {column}" if column else ""
    return f"{expression!r} is not a valid CEL expression (syntax error{where})"
