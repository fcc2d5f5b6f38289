"""Column types a feature view may declare, and how each maps to Arrow.

The set is deliberately small for now (scalars only): these are the types every
path (Arrow compute, DuckDB, the streaming state) handles with the same meaning.
"""

from __future__ import annotations

import enum
from datetime import datetime

import pyarrow as pa

Scalar = int | float | str | bool | datetime | None
"""A single value of a column or feature, as Python sees it."""


class ColumnType(enum.Enum):
    """The type of a source column, a transformed column or a feature."""

    INT64 = "int64"
    DOUBLE = "double"
    STRING = "string"
    BOOL = "bool"
    TIMESTAMP = "timestamp"

    @property
    def arrow(self) -> pa.DataType:
        """The Arrow type every path uses for this column (timestamps: UTC, microseconds)."""
        return _ARROW[self]

    @property
    def numeric(self) -> bool:
        """Whether sums, means, minima and maxima make sense."""
        return self in (ColumnType.INT64, ColumnType.DOUBLE)

    def accepts(self, value: Scalar) -> bool:
        """Whether a Python value (a default, a literal) is of this type; None always is."""
        if value is None:
            return True
        if self is ColumnType.BOOL:
            return isinstance(value, bool)
        if self is ColumnType.INT64:
            return isinstance(value, int) and not isinstance(value, bool)
        if self is ColumnType.DOUBLE:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self is ColumnType.STRING:
            return isinstance(value, str)
        return isinstance(value, datetime) and value.tzinfo is not None


_ARROW: dict[ColumnType, pa.DataType] = {
    ColumnType.INT64: pa.int64(),
    ColumnType.DOUBLE: pa.float64(),
    ColumnType.STRING: pa.string(),
    ColumnType.BOOL: pa.bool_(),
    ColumnType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
}


class FeatureStatus(enum.Enum):
    """Whether a feature value was found and is still valid, the same in every path."""

    PRESENT = "present"
    """The entity has a row at or before the read time, younger than the TTL."""
    NOT_FOUND = "not_found"
    """The entity has no row at or before the read time; the default is served."""
    EXPIRED = "expired"
    """The entity's latest row is at least the TTL old; the default is served."""
