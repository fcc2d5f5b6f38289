"""Raw events of a topic source: one JSON object per Kafka record, checked against the
view's source columns.

JSON is the format: it is what producers of raw events (web backends, CDC tools,
``kafka-console-producer``) write without a schema registry, and the declared
source columns are the schema it is checked against. Each column maps to one
JSON kind: INT64 an integer, DOUBLE a number, STRING a string, BOOL true/false,
TIMESTAMP an RFC 3339 string with a zone offset (``2026-06-01T08:00:00Z``).
Every declared column must be present; values may be null except the entity
keys and the event time. Extra members are ignored, so producers can add fields
before a view uses them. An event that breaks these rules is refused with the
reason (the streamer dead-letters it) instead of being silently dropped.
"""

from __future__ import annotations

import json
from datetime import datetime

from strata.transforms.definition import FeatureView
from strata.transforms.types import ColumnType, Scalar


class RawEventError(ValueError):
    """A raw event that does not fit the view's source columns; the message says why."""


def decode(view: FeatureView, value: bytes | None) -> dict[str, Scalar]:
    """The source row of one raw event; RawEventError naming the column that does not fit."""
    try:
        document = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RawEventError(f"not a JSON document: {error}") from None
    if not isinstance(document, dict):
        raise RawEventError(f"expected a JSON object, got {type(document).__name__}")
    required = {*view.entities, view.event_time}
    row: dict[str, Scalar] = {}
    for column in view.source_columns:
        if column.name not in document:
            raise RawEventError(f"column {column.name!r} is missing")
        raw = document[column.name]
        if raw is None:
            if column.name in required:
                raise RawEventError(f"column {column.name!r} is null; it may not be")
            row[column.name] = None
            continue
        row[column.name] = _typed(column.name, column.type, raw)
    return row


def _typed(name: str, kind: ColumnType, raw: object) -> Scalar:
    if kind is ColumnType.INT64 and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind is ColumnType.DOUBLE and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if kind is ColumnType.STRING and isinstance(raw, str):
        return raw
    if kind is ColumnType.BOOL and isinstance(raw, bool):
        return raw
    if kind is ColumnType.TIMESTAMP and isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment
    raise RawEventError(f"column {name!r} expected {_EXPECTED[kind]}, got {json.dumps(raw)}")


_EXPECTED = {
    ColumnType.INT64: "an integer",
    ColumnType.DOUBLE: "a number",
    ColumnType.STRING: "a string",
    ColumnType.BOOL: "true or false",
    ColumnType.TIMESTAMP: "an RFC 3339 time with a zone offset",
}
