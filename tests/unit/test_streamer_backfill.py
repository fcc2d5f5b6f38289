"""Which offline rows a backfill folds: the event-time range, arrival order, and one
copy of each Kafka record when several view versions landed it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from strata.api.features.v1.features_pb2 import (
    VALUE_TYPE_DOUBLE,
    VALUE_TYPE_INT64,
    FeatureViewSpec,
    Field,
    Source,
)
from strata.streamer.domain.backfill import rows_to_fold, same_source

T0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
ARRIVAL = ("__partition", "__offset")


def _rows(*rows: tuple[int, int, int, int]) -> pa.Table:
    """(minute of event time, Kafka partition, offset, value) per row."""
    return pa.table(
        {
            "event_time": pa.array(
                [T0 + timedelta(minutes=m) for m, _, _, _ in rows], pa.timestamp("us", tz="UTC")
            ),
            "__partition": pa.array([p for _, p, _, _ in rows], pa.int32()),
            "__offset": pa.array([o for _, _, o, _ in rows], pa.int64()),
            "value": pa.array([v for _, _, _, v in rows], pa.int64()),
        }
    )


def test_rows_come_in_arrival_order_and_each_record_once() -> None:
    # Two versions' copies of partition 0, and partition 1 read before partition 0.
    rows = _rows((5, 1, 0, 50), (1, 0, 1, 11), (0, 0, 0, 10), (1, 0, 1, 11), (0, 0, 0, 10))

    folded = rows_to_fold(rows, "event_time", ARRIVAL, None, None)

    assert folded.column("value").to_pylist() == [10, 11, 50]


def test_a_dataset_keeps_its_order_and_duplicates() -> None:
    rows = _rows((5, 0, 0, 50), (1, 0, 0, 11), (1, 0, 0, 11))

    folded = rows_to_fold(rows, "event_time", None, None, None)

    assert folded.column("value").to_pylist() == [50, 11, 11]


def test_the_range_bounds_event_times_inclusively() -> None:
    rows = _rows((0, 0, 0, 0), (10, 0, 1, 10), (20, 0, 2, 20), (30, 0, 3, 30))

    folded = rows_to_fold(
        rows, "event_time", ARRIVAL, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    )

    assert folded.column("value").to_pylist() == [10, 20]


def test_versions_with_the_same_source_share_their_copies() -> None:
    source = Source(topic="raw.couriers", columns=[Field(name="courier_id", type=VALUE_TYPE_INT64)])
    other = Source(topic="raw.couriers", columns=[Field(name="courier_id", type=VALUE_TYPE_DOUBLE)])

    assert same_source(FeatureViewSpec(source=source), FeatureViewSpec(source=source))
    assert not same_source(FeatureViewSpec(source=source), FeatureViewSpec(source=other))
