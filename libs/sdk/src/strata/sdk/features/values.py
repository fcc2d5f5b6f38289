"""Values between the command line and the API: ``--entity key=value`` in, ``Value`` out.

An entity key typed on the command line is text; the view's spec says which type
each key has, so the text is parsed to that type here and a wrong or missing key
is named before any read is sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from strata.api.features.v1 import features_pb2 as pb
from strata.core.errors import InvalidArgumentError


def entity_row(spec: pb.FeatureViewSpec, items: Sequence[str]) -> pb.EntityRow:
    """The entity ``items`` (``key=value``) name, typed by ``spec``'s entity keys."""
    types = {field.name: field.type for field in spec.entities}
    keys = ", ".join(types)
    row = pb.EntityRow()
    for item in items:
        key, sep, text = item.partition("=")
        where = f"--entity {item}"
        if not sep:
            raise InvalidArgumentError(where, "expected key=value")
        if key not in types:
            raise InvalidArgumentError(
                where, f"feature view {spec.name!r} has no entity key {key!r} (keys: {keys})"
            )
        if key in row.keys:
            raise InvalidArgumentError(where, f"entity key {key!r} is given twice")
        if types[key] == pb.VALUE_TYPE_INT64:
            try:
                row.keys[key].int64_value = int(text)
            except ValueError:
                raise InvalidArgumentError(where, f"expected an integer, got {text!r}") from None
        else:
            row.keys[key].string_value = text
    missing = [key for key in types if key not in row.keys]
    if missing:
        raise InvalidArgumentError(
            "--entity", f"feature view {spec.name!r} needs {', '.join(missing)} (keys: {keys})"
        )
    return row


def show_value(value: pb.Value) -> str:
    """A value as people read it; ``null`` when it has none."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return "null"
    if kind == "timestamp_value":
        return str(value.timestamp_value.ToDatetime().isoformat() + "Z")
    if kind in ("int64_value", "double_value", "string_value", "bool_value", "bytes_value"):
        return str(getattr(value, kind))
    return str(list(getattr(value, kind).values))
