"""Feature ``Value`` messages to and from Python scalars, and model outputs to ``Value``.

Pure: no I/O. A value of the wrong kind is refused with :class:`InvalidArgumentError`
naming the field and the kind expected: the online key is the JSON of the entity's
values, so ``42`` and ``"42"`` are different entities and a mistyped key must not
be silently "not found".
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from strata.api.features.v1 import features_pb2 as fpb
from strata.core.errors import InvalidArgumentError
from strata.gateway.tensors import Array
from strata.transforms.types import ColumnType, FeatureStatus, Scalar

KINDS = {
    ColumnType.INT64: "int64_value",
    ColumnType.DOUBLE: "double_value",
    ColumnType.STRING: "string_value",
    ColumnType.BOOL: "bool_value",
    ColumnType.TIMESTAMP: "timestamp_value",
}
"""The ``Value`` field holding each column type."""

NUMBER = ("int64_value", "double_value", "bool_value")
"""Kinds a number fed straight to a model (``request:<column>``) may arrive as."""

STATUSES = {
    FeatureStatus.PRESENT: fpb.FEATURE_STATUS_PRESENT,
    FeatureStatus.NOT_FOUND: fpb.FEATURE_STATUS_NOT_FOUND,
    FeatureStatus.EXPIRED: fpb.FEATURE_STATUS_EXPIRED,
}


def typed(value: fpb.Value, kinds: tuple[str, ...], field: str, what: str) -> Scalar:
    """The Python value of ``value`` if it is null or one of ``kinds``, else refused."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind not in kinds:
        raise InvalidArgumentError(field, f"{what}: expected {' or '.join(kinds)}, got {kind}")
    if kind == "timestamp_value":
        moment: datetime = value.timestamp_value.ToDatetime(tzinfo=UTC)
        return moment
    result: Scalar = getattr(value, kind)
    return result


def value_of(value: Scalar) -> fpb.Value:
    """The ``Value`` of a Python scalar (None: an unset kind, which means null)."""
    if value is None:
        return fpb.Value()
    if isinstance(value, bool):
        return fpb.Value(bool_value=value)
    if isinstance(value, int):
        return fpb.Value(int64_value=value)
    if isinstance(value, float):
        return fpb.Value(double_value=value)
    if isinstance(value, str):
        return fpb.Value(string_value=value)
    message = fpb.Value()
    message.timestamp_value.FromDatetime(value)
    return message


def feature_value(
    value: Scalar, event_time: datetime | None, status: FeatureStatus
) -> fpb.FeatureValue:
    """A feature as served, for the prediction log."""
    message = fpb.FeatureValue(value=value_of(value), status=STATUSES[status])
    if event_time is not None:
        message.event_time.FromDatetime(event_time)
    return message


def output_value(row: Array) -> fpb.Value:
    """One row's slice of an output tensor: a scalar, or a list for a vector (flattened)."""
    if row.ndim == 0:
        item = row.item()
        if isinstance(item, bool | np.bool_):
            return fpb.Value(bool_value=bool(item))
        if isinstance(item, int):
            return fpb.Value(int64_value=item)
        return fpb.Value(double_value=float(item))
    flat = row.ravel()
    if flat.dtype == np.bool_:
        return fpb.Value(bool_list_value=fpb.BoolList(values=flat.tolist()))
    if np.issubdtype(flat.dtype, np.integer):
        return fpb.Value(int64_list_value=fpb.Int64List(values=flat.tolist()))
    if flat.dtype == np.float64:
        return fpb.Value(double_list_value=fpb.DoubleList(values=flat.tolist()))
    return fpb.Value(float_list_value=fpb.FloatList(values=flat.astype(np.float32).tolist()))
