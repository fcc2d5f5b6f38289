"""Turning source rows into a view's columns: the one step every path shares.

Each path hands its rows to ``transformed``: the batch path a whole offline table,
the streaming path a batch of records, the request-time path the caller's values.
The rows are checked against the declared source columns and extended with the
view's transforms, evaluated by the same compiled Arrow expressions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import FeatureView
from strata.transforms.types import Scalar


def source_schema(view: FeatureView) -> pa.Schema:
    """The Arrow schema of the view's source rows."""
    return pa.schema([(column.name, column.type.arrow) for column in view.source_columns])


def table_from_records(view: FeatureView, records: Sequence[Mapping[str, Scalar]]) -> pa.Table:
    """Source rows given as mappings (a decoded event, a request) as an Arrow table."""
    schema = source_schema(view)
    missing = [name for name in schema.names if any(name not in record for record in records)]
    if missing:
        raise InvalidArgumentError(
            f"feature_view[{view.name}].source.columns[{missing[0]}]",
            f"a row of feature view {view.name!r} lacks column {missing[0]!r}",
        )
    try:
        return pa.Table.from_pylist([dict(record) for record in records], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InvalidArgumentError(
            f"feature_view[{view.name}].source.columns",
            f"rows of feature view {view.name!r} do not match its source columns: {error}",
        ) from None


def conformed(view: FeatureView, table: pa.Table) -> pa.Table:
    """``table`` reduced to the view's source columns, cast to their declared types."""
    schema = source_schema(view)
    for name, kind in zip(schema.names, schema.types, strict=True):
        if name not in table.column_names:
            raise InvalidArgumentError(
                f"feature_view[{view.name}].source.columns[{name}]",
                f"the rows of feature view {view.name!r} lack column {name!r}",
            )
        actual = table.schema.field(name).type
        if actual != kind and not pa.types.is_null(actual):
            try:
                table.column(name).cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InvalidArgumentError(
                    f"feature_view[{view.name}].source.columns[{name}]",
                    f"column {name!r} of feature view {view.name!r} is {actual}, expected {kind}",
                ) from None
    return table.select(schema.names).cast(schema)


def transformed(view: FeatureView, table: pa.Table) -> pa.Table:
    """Source rows (already conformed) extended with the view's transformed columns."""
    for name, expression in view.compiled_transforms:
        table = table.append_column(name, expression.evaluate(table))
    return table
