"""API ``Value`` messages to and from the Python scalars the transforms work on.

Entity keys are checked against the view's key types here, at the edge, because
the online key is the JSON of the values: ``42`` and ``"42"`` are different
entities, so a key of the wrong kind is refused rather than silently not found.
"""

from __future__ import annotations

from datetime import UTC, datetime

from strata.api.features.v1 import features_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import FeatureView
from strata.transforms.streaming import EntityKey
from strata.transforms.types import ColumnType, Scalar

_KINDS = {
    ColumnType.INT64: "int64_value",
    ColumnType.DOUBLE: "double_value",
    ColumnType.STRING: "string_value",
    ColumnType.BOOL: "bool_value",
    ColumnType.TIMESTAMP: "timestamp_value",
}


def entity_key(view: FeatureView, row: pb.EntityRow, where: str) -> EntityKey:
    """The key of ``row`` in ``view``'s entity order; INVALID_ARGUMENT naming a bad key."""
    key: list[Scalar] = []
    for name in view.entities:
        if name not in row.keys:
            raise InvalidArgumentError(
                f"{where}.keys[{name}]",
                f"missing: feature view {view.name!r} is keyed by {', '.join(view.entities)}",
            )
        value = row.keys[name]
        expected = _KINDS[view.columns[name]]
        kind = value.WhichOneof("kind")
        if kind != expected:
            raise InvalidArgumentError(
                f"{where}.keys[{name}]",
                f"expected {expected} for feature view {view.name!r}, got {kind}",
            )
        key.append(scalar(value))
    return tuple(key)


def scalar(value: pb.Value) -> Scalar:
    """The Python value of a (scalar or null) ``Value``."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "timestamp_value":
        moment: datetime = value.timestamp_value.ToDatetime(tzinfo=UTC)
        return moment
    result: Scalar = getattr(value, kind)
    return result
