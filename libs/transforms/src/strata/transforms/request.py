"""The request-time path: a view's row-level features from values a caller supplies.

The gateway receives, with a prediction request, the columns a request-time view
declares; ``request_features`` runs the view's transforms over them (the same
compiled Arrow expressions as the batch and streaming paths, over a batch of one
or many rows) and returns its plain (non-aggregated) features, defaults in place
of nulls. Aggregations need history, which a request does not carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow.compute as pc

from strata.transforms.definition import FeatureView
from strata.transforms.rows import table_from_records, transformed
from strata.transforms.types import Scalar


def request_features(
    view: FeatureView, rows: Sequence[Mapping[str, Scalar]]
) -> list[dict[str, Scalar]]:
    """The plain features of ``view`` for each supplied row, in order."""
    table = transformed(view, table_from_records(view, rows))
    columns: dict[str, list[Scalar]] = {}
    for feature in view.resolved_features:
        if feature.function is not None or feature.column is None:
            continue
        values = table.column(feature.column)
        if feature.default is not None:
            values = pc.coalesce(values, feature.default)
        columns[feature.name] = values.to_pylist()
    return [{name: values[index] for name, values in columns.items()} for index in range(len(rows))]
