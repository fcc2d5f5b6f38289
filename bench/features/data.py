"""The generated, seeded data every side of the benchmark reads, and the view over it.

One feature view, ``drivers``: a driver id, an event time and three features
taken from the driver's latest row (``trips``, ``rating``, ``spend``). Plain
features rather than windows, because they are what all three engines compute
alike: Feast's and DuckDB's point-in-time join is "the latest row not after the
label's time", and so is a plain feature of a Strata view without TTL.

The training rows are in event-time order, as an offline copy of a topic is, and
event times are distinct, so "the latest row" never needs a tie-break that the
engines might settle differently. Labels ask for entities with no rows and for
times before an entity's first row too: those answers are null on every side.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from strata.transforms.definition import Column, Feature, FeatureView, TopicSource
from strata.transforms.types import ColumnType

FEATURES = ("trips", "rating", "spend")
"""The features of the view, in the order every read asks for them."""
ENTITY = "driver_id"
LABEL_TIME = "event_timestamp"
"""Feast's name for the label time column; the Strata spine and DuckDB read the same file."""
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=30)
SEED = 20261201
TIME = pa.timestamp("us", tz="UTC")


def drivers_view(topic: str) -> FeatureView:
    """The view every part reads, named uniquely so runs never share catalog entries."""
    return FeatureView(
        name=f"bench_drivers_{uuid.uuid4().hex[:10]}",
        entities=(ENTITY,),
        event_time="event_time",
        source=TopicSource(
            topic,
            (
                Column(ENTITY, ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("trips", ColumnType.INT64),
                Column("rating", ColumnType.DOUBLE),
                Column("spend", ColumnType.DOUBLE),
            ),
        ),
        features=tuple(Feature(name) for name in FEATURES),
    )


@dataclass(frozen=True)
class Files:
    """Where one run's generated Parquet files are."""

    rows: Path
    """Training rows: driver_id, event_time, trips, rating, spend."""
    labels: Path
    """Labels: driver_id, event_timestamp, label_id (0, 1, ... in file order)."""
    online_rows: Path
    """One recent row per served entity: what the online stores hold."""


def feature_rows(count: int, entities: int, rng: np.random.Generator) -> pa.Table:
    """``count`` rows over ``entities`` drivers, in increasing, distinct event time."""
    span_us = SPAN // timedelta(microseconds=1)
    offsets = np.sort(rng.integers(0, span_us - count, count)) + np.arange(count)
    start_us = (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return pa.table(
        {
            ENTITY: pa.array(rng.integers(0, entities, count), pa.int64()),
            "event_time": pa.array(start_us + offsets, pa.int64()).cast(TIME),
            "trips": pa.array(rng.integers(0, 500, count), pa.int64()),
            "rating": pa.array(np.round(rng.uniform(1.0, 5.0, count), 3), pa.float64()),
            "spend": pa.array(np.round(rng.uniform(0.0, 250.0, count), 2), pa.float64()),
        }
    )


def labels(count: int, entities: int, rng: np.random.Generator) -> pa.Table:
    """``count`` labels: 5 % of them for drivers with no rows, times anywhere in the span."""
    span_us = SPAN // timedelta(microseconds=1)
    start_us = (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    drivers = rng.integers(0, entities + entities // 20, count)
    return pa.table(
        {
            ENTITY: pa.array(drivers, pa.int64()),
            LABEL_TIME: pa.array(start_us + rng.integers(0, span_us, count), pa.int64()).cast(TIME),
            "label_id": pa.array(np.arange(count), pa.int64()),
        }
    )


def online_rows(entities: int, now: datetime, rng: np.random.Generator) -> pa.Table:
    """One row per driver ``0 .. entities - 1``, a minute old: the values served online."""
    when = (now - timedelta(minutes=1)).replace(microsecond=0)
    return pa.table(
        {
            ENTITY: pa.array(np.arange(entities), pa.int64()),
            "event_time": pa.array([when] * entities, TIME),
            "trips": pa.array(rng.integers(0, 500, entities), pa.int64()),
            "rating": pa.array(np.round(rng.uniform(1.0, 5.0, entities), 3), pa.float64()),
            "spend": pa.array(np.round(rng.uniform(0.0, 250.0, entities), 2), pa.float64()),
        }
    )


def generate(
    folder: Path, rows: int, label_count: int, entities: int, served: int, now: datetime
) -> Files:
    """Write the run's three Parquet files under ``folder`` (same seed, same files)."""
    rng = np.random.default_rng(SEED)
    files = Files(folder / "rows.parquet", folder / "labels.parquet", folder / "online.parquet")
    pq.write_table(feature_rows(rows, entities, rng), files.rows)
    pq.write_table(labels(label_count, entities, rng), files.labels)
    pq.write_table(online_rows(served, now, rng), files.online_rows)
    return files
