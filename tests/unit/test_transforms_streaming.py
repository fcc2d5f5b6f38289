"""The streaming executor's bookkeeping: counters, snapshots bound to their view, and the
rows it hands the online store, whose windows slide to the read time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
)
from strata.transforms.online import decode_row, encode_row
from strata.transforms.streaming import IngestCounts, StreamingExecutor
from strata.transforms.types import ColumnType, FeatureStatus

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def view(name: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=("user",),
        event_time="ts",
        source=TopicSource(
            "clicks", (Column("user", ColumnType.STRING), Column("ts", ColumnType.TIMESTAMP))
        ),
        features=(Feature("clicks_1h", aggregation=Aggregation(AggregationFunction.COUNT, "1h")),),
        allowed_lateness="5m",
    )


def test_late_duplicate_and_invalid_records_are_counted_not_folded() -> None:
    executor = StreamingExecutor(view("clicks"))
    touched = executor.ingest(
        [
            {"user": "ann", "ts": T0},
            {"user": "ann", "ts": T0},
            {"user": "ann", "ts": T0 - timedelta(minutes=6)},
            {"user": "ann", "ts": T0 - timedelta(minutes=5)},
            {"user": None, "ts": T0},
        ]
    )
    assert touched == {("ann",)}
    assert executor.counts == IngestCounts(accepted=2, late=1, duplicates=1, invalid=1)
    row = executor.read(("ann",), T0)
    assert (row.status, row.values["clicks_1h"]) == (FeatureStatus.PRESENT, 2)


def test_a_snapshot_restores_state_and_counters() -> None:
    executor = StreamingExecutor(view("clicks"))
    executor.ingest([{"user": "ann", "ts": T0}, {"user": "ann", "ts": T0}])
    restored = StreamingExecutor.restore(view("clicks"), executor.snapshot())
    restored.ingest([{"user": "ann", "ts": T0}, {"user": "ann", "ts": T0 + timedelta(minutes=1)}])
    assert restored.counts == IngestCounts(accepted=2, late=0, duplicates=2, invalid=0)
    assert restored.read(("ann",), T0 + timedelta(minutes=1)).values["clicks_1h"] == 2


def test_a_snapshot_of_another_view_is_refused() -> None:
    snapshot = StreamingExecutor(view("clicks")).snapshot()
    with pytest.raises(InvalidArgumentError) as caught:
        StreamingExecutor.restore(view("taps"), snapshot)
    assert caught.value.field == "snapshot"


def test_a_record_lacking_a_column_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        StreamingExecutor(view("clicks")).ingest([{"user": "ann"}])
    assert caught.value.field == "feature_view[clicks].source.columns[ts]"


def test_the_online_row_carries_the_events_its_windows_still_cover() -> None:
    executor = StreamingExecutor(view("clicks"))
    times = [T0 - timedelta(minutes=m) for m in (90, 59, 30, 0)]
    executor.ingest([{"user": "ann", "ts": t} for t in times])
    row = executor.online_row(("ann",))
    assert (row.event_time, row.values["clicks_1h"]) == (T0, 3)
    # The 90-minute-old click can fall in no window read at or after T0.
    assert [event.time_us for event in row.window] == [
        int(t.timestamp() * 1_000_000) for t in times[1:]
    ]


def test_windows_read_from_the_online_store_slide_to_the_read_time() -> None:
    executor = StreamingExecutor(view("clicks"))
    executor.ingest([{"user": "ann", "ts": T0 - timedelta(minutes=m)} for m in (50, 10, 0)])
    stored = encode_row(view("clicks"), executor.online_row(("ann",)))
    for later, count in ((0, 3), (15, 2), (55, 1), (60, 0), (120, 0)):
        at = T0 + timedelta(minutes=later)
        (value,) = decode_row(view("clicks"), ["clicks_1h"], stored, at)
        assert (value.status, value.value) == (FeatureStatus.PRESENT, count), later
        assert executor.read(("ann",), at).values["clicks_1h"] == count, later
