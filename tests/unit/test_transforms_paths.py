"""One event log, three paths, the same values: the property the feature store rests on.

Hypothesis generates event logs (several entities, out-of-order arrival within
and beyond the allowed lateness, exact duplicates, gaps longer than the TTL),
replays each through the streaming executor (in batches of random size, with a
snapshot/restore in the middle) and asks the batch executor the same questions at
several checkpoints (and the online store's layout: each entity's hash as the
streamer writes it, read later than its last event, windows sliding to the read
time), for allowed latenesses of 0, 30 minutes and 4 hours: every
feature, entity and read time must agree, and the request-time path must give the
batch's row-level features for the latest row. A mismatch prints the smallest
failing log (hypothesis shrinks it).
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import given, note, settings
from hypothesis import strategies as st

from strata.transforms.batch import feature_values
from strata.transforms.definition import (
    Aggregation,
    AggregationFunction,
    Column,
    Feature,
    FeatureView,
    TopicSource,
    Transform,
)
from strata.transforms.online import decode_row, encode_row
from strata.transforms.request import request_features
from strata.transforms.streaming import StreamingExecutor
from strata.transforms.types import ColumnType, Scalar

BASE = datetime(2026, 3, 1, tzinfo=UTC)
F = AggregationFunction

VIEW = FeatureView(
    name="courier_stats",
    entities=("courier_id",),
    event_time="event_time",
    source=TopicSource(
        "couriers",
        (
            Column("courier_id", ColumnType.INT64),
            Column("event_time", ColumnType.TIMESTAMP),
            Column("amount", ColumnType.INT64),
            Column("price", ColumnType.DOUBLE),
            Column("kind", ColumnType.STRING),
        ),
    ),
    transforms=(
        Transform("total", "amount * 2 + 1"),
        Transform("big", "price > 2.5 or amount > 10"),
        Transform("label", 'lower(kind) + "_x" if price > 1 else kind'),
        Transform("ratio", "price / 4"),
    ),
    features=(
        Feature("orders_1h", aggregation=Aggregation(F.COUNT, "1h")),
        Feature("amount_1h", column="amount", aggregation=Aggregation(F.SUM, "1h")),
        Feature("price_sum_3h", column="price", aggregation=Aggregation(F.SUM, "3h")),
        Feature("price_mean_3h", column="price", aggregation=Aggregation(F.MEAN, "3h"), default=-1),
        Feature("amount_min_3h", column="amount", aggregation=Aggregation(F.MIN, "3h")),
        Feature("price_max_1h", column="price", aggregation=Aggregation(F.MAX, "1h")),
        Feature("label_last_3h", column="label", aggregation=Aggregation(F.LAST, "3h")),
        Feature("total"),
        Feature("big", default=False),
        Feature("ratio", default=-1.0),
    ),
    ttl="6h",
    allowed_lateness="30m",
)
PLAIN = [f.name for f in VIEW.resolved_features if f.function is None]

Event = tuple[int, int, int | None, float | None, str]
"""(courier_id, minutes after BASE, amount, price, kind): short enough to read when printed."""


@st.composite
def event_logs(draw: st.DrawFn) -> list[Event]:
    """Events in arrival order: a clock that advances (sometimes past the TTL), events
    up to 270 minutes behind it (within or beyond the allowed lateness), and replays."""
    log: list[Event] = []
    clock = 0
    for _ in range(draw(st.integers(1, 30))):
        if log and draw(st.integers(0, 5)) == 0:
            log.append(draw(st.sampled_from(log)))
            continue
        clock += draw(st.sampled_from([0, 0, 15, 30, 60, 61, 180, 420]))
        minutes = clock - draw(st.sampled_from([0, 0, 0, 15, 30, 45, 200, 270]))
        amount = draw(st.none() | st.integers(-5, 20))
        price = draw(st.none() | st.integers(0, 20).map(lambda n: n / 2))
        kind = draw(st.sampled_from(["A", "b", "Cc"]))
        log.append((draw(st.integers(1, 3)), minutes, amount, price, kind))
    return log


def record(event: Event) -> dict[str, Scalar]:
    courier_id, minutes, amount, price, kind = event
    return {
        "courier_id": courier_id,
        "event_time": BASE + timedelta(minutes=minutes),
        "amount": amount,
        "price": price,
        "kind": kind,
    }


def same(left: Scalar, right: Scalar) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-9)
    return left == right and type(left) is type(right)


def compare(
    view: FeatureView, log: list[Event], arrived: int, streaming: StreamingExecutor, offset: int
) -> None:
    records = [record(event) for event in log[:arrived]]
    latest = BASE + timedelta(minutes=max(event[1] for event in log[:arrived]))
    at = latest + timedelta(minutes=offset)
    entities = [1, 2, 3, 4]
    spine = pa.table({"courier_id": entities, "at": [at] * len(entities)})
    batch = feature_values(view, pa.Table.from_pylist(records), spine)
    values = batch.values.to_pylist()
    for index, entity in enumerate(entities):
        online = streaming.read((entity,), at)
        where = f"entity {entity} at +{offset}min after {arrived} events"
        assert online.status.value == batch.statuses[index].as_py(), where
        assert online.event_time == batch.event_times[index].as_py(), where
        for name, expected in values[index].items():
            assert same(online.values[name], expected), (
                f"{where}: {name} streaming={online.values[name]!r} batch={expected!r}"
            )
        stored = (
            encode_row(view, streaming.online_row((entity,)))
            if streaming.watermark((entity,)) is not None
            else {}
        )
        names = [f.name for f in view.resolved_features]
        hashed = decode_row(view, names, stored, at)
        assert hashed[0].status.value == batch.statuses[index].as_py(), f"{where}: online store"
        for value, name in zip(hashed, names, strict=True):
            expected = values[index][name]
            assert value.event_time == batch.event_times[index].as_py(), where
            assert same(value.value, expected), (
                f"{where}: {name} online store={value.value!r} batch={expected!r}"
            )
        if online.event_time is not None:
            # The latest row: of the distinct records at that time, the last to arrive.
            distinct = [r for i, r in enumerate(records) if r not in records[:i]]
            last = [
                r
                for r in distinct
                if r["courier_id"] == entity and r["event_time"] == online.event_time
            ]
            supplied = request_features(view, [last[-1]])[0]
            if online.status.value == "present":
                for name in PLAIN:
                    assert same(supplied[name], values[index][name]), f"{where}: request {name}"


@settings(max_examples=60, deadline=None)
@given(
    log=event_logs(),
    batch_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    offsets=st.lists(st.sampled_from([0, 15, 59, 60, 61, 180, 359, 360, 420]), min_size=2),
    lateness=st.sampled_from(["0s", "30m", "4h"]),
)
def test_streaming_batch_and_request_paths_agree(
    log: list[Event], batch_sizes: list[int], offsets: list[int], lateness: str
) -> None:
    note(f"log (courier_id, minutes, amount, price, kind) = {log}")
    view = replace(VIEW, allowed_lateness=lateness)
    streaming = StreamingExecutor(view)
    arrived = 0
    step = 0
    while arrived < len(log):
        size = batch_sizes[step % len(batch_sizes)]
        chunk = [record(event) for event in log[arrived : arrived + size]]
        if step % 2:
            streaming.ingest(pa.Table.from_pylist(chunk))
        else:
            streaming.ingest(chunk)
        arrived += len(chunk)
        step += 1
        if step == 2:
            streaming = StreamingExecutor.restore(view, streaming.snapshot())
        compare(view, log, arrived, streaming, offsets[step % len(offsets)])
