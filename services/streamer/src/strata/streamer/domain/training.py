"""The rules of a training-set request: what a label file must hold, where the result goes.

A label file is Parquet with, per row, the entity key columns of every requested
view, an event time (the time the label was true: every feature is read as of
it, never later), and any label columns, which the output copies as they are.
The output is that table with one column per requested feature, named by its
reference ``"<view>:<feature>"``, in one Parquet file ``part-0.parquet`` of the
output folder; its sha256 is the training set's checksum.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import pyarrow as pa

from strata.core.blobs import check_key
from strata.core.errors import InvalidArgumentError
from strata.streamer.domain.refs import FeatureRef
from strata.transforms.definition import FeatureView
from strata.transforms.types import ColumnType

DEFAULT_TIME_COLUMN = "event_time"
RESULT_FILE = "part-0.parquet"


class TrainingSetState(enum.Enum):
    """Where a training-set job is; SUCCEEDED and FAILED are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def time_column(requested: str) -> str:
    """The label file's event time column: the requested one, ``event_time`` by default."""
    return requested or DEFAULT_TIME_COLUMN


def check_labels(schema: pa.Schema, uri: str, time: str, views: Sequence[FeatureView]) -> None:
    """INVALID_ARGUMENT naming the column unless the labels hold what ``views`` are keyed by.

    The time column must be a timestamp; each entity key column must be of its
    view's key type (an int64 key ``42`` and a string ``"42"`` are different
    entities, so a mismatch would silently find nothing).
    """
    if time not in schema.names:
        raise InvalidArgumentError(
            "event_time_column", f"the labels {uri!r} lack the event time column {time!r}"
        )
    if not pa.types.is_timestamp(schema.field(time).type):
        raise InvalidArgumentError(
            "event_time_column",
            f"column {time!r} of the labels {uri!r} is {schema.field(time).type}, "
            "expected a timestamp",
        )
    for view in views:
        for key in view.entities:
            expected: ColumnType = view.columns[key]
            if key not in schema.names:
                raise InvalidArgumentError(
                    "labels_uri",
                    f"the labels {uri!r} lack column {key!r}, the entity key of feature view "
                    f"{view.name!r}",
                )
            found = schema.field(key).type
            if not _same_kind(found, expected):
                raise InvalidArgumentError(
                    "labels_uri",
                    f"column {key!r} of the labels {uri!r} is {found}; feature view "
                    f"{view.name!r} is keyed by {expected.value}",
                )


def _same_kind(found: pa.DataType, expected: ColumnType) -> bool:
    if expected is ColumnType.INT64:
        return bool(pa.types.is_integer(found))
    return bool(pa.types.is_string(found) or pa.types.is_large_string(found))


def output_folder(requested: str, training_set_id: str) -> str:
    """The folder the result goes to; INVALID_ARGUMENT when the requested one is no blob key."""
    folder = requested.strip("/") or f"training_sets/{training_set_id}"
    try:
        check_key(result_key(folder))
    except ValueError as error:
        raise InvalidArgumentError("output_uri", str(error)) from None
    return folder


def result_key(folder: str) -> str:
    """The blob key of the training set's Parquet file in ``folder``."""
    return f"{folder}/{RESULT_FILE}"


def column_of(view: str, feature: str) -> str:
    """The output column of one requested feature: its reference."""
    return f"{view}:{feature}"


def features_by_view(refs: Sequence[FeatureRef]) -> Mapping[str, list[str]]:
    """The requested features of each view, views and features in request order."""
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        grouped.setdefault(ref.view, []).append(ref.feature)
    return grouped
