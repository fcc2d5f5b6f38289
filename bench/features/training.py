"""Point-in-time training sets: Strata's batch executor, raw DuckDB ``ASOF JOIN``, Feast.

Each side starts from the same two Parquet files (training rows and labels) and
ends with one value per label and feature, timed from reading the files to the
finished table:

- **Strata**: both files read with pyarrow, then ``strata.transforms.batch.feature_values``,
  the code the streamer's training sets run, over the ``drivers`` view.
- **DuckDB**: one ``ASOF LEFT JOIN`` over ``read_parquet`` of both files, the
  plainest correct query a person would write by hand.
- **Feast**: ``get_historical_features(...).to_df()`` in Feast's own process
  (labels read with pandas, as its API takes a data frame).

The rounds rotate which side goes first, so none always meets a cold or a warm
machine. After the last round the three answers are compared value by value.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from bench.bus.stats import paired_ratio
from bench.features.compare import Comparison, compare
from bench.features.data import ENTITY, FEATURES, LABEL_TIME, Files
from bench.features.feast_peer import FeastWorker
from strata.transforms.batch import feature_values
from strata.transforms.definition import FeatureView

SIDES = ("strata", "duckdb", "feast")


@dataclass(frozen=True)
class TrainingResult:
    rows: int
    labels: int
    entities: int
    seconds: dict[str, list[float]]
    """Each side's time per round."""
    median: dict[str, float]
    feast_over_strata: float
    """Median of per-round ratios Feast / Strata: how many times faster Strata is."""
    strata_over_duckdb: float
    """Median of per-round ratios Strata / DuckDB."""
    comparisons: dict[str, Comparison]
    """Each peer's answer against Strata's."""
    nulls: int
    """Labels Strata answered with null features (no row yet, or an unknown driver)."""


def strata(view: FeatureView, files: Files) -> pa.Table:
    """Strata's batch path: the training set with ``label_id`` and the features."""
    spine = pq.read_table(files.labels)
    rows = pq.read_table(files.rows)
    values = feature_values(view, rows, spine, at=LABEL_TIME).values
    return values.append_column("label_id", spine.column("label_id"))


def raw_duckdb(files: Files) -> pa.Table:
    """The same training set as one hand-written DuckDB ASOF join."""
    selected = ", ".join(f"f.{name}" for name in FEATURES)
    query = f"""
SELECT l.label_id, {selected}
FROM read_parquet('{files.labels}') l
ASOF LEFT JOIN read_parquet('{files.rows}') f
  ON l.{ENTITY} = f.{ENTITY} AND l.{LABEL_TIME} >= f.event_time
ORDER BY l.label_id
"""
    connection = duckdb.connect()
    try:
        return connection.sql(query).to_arrow_table()
    finally:
        connection.close()


def measure(
    view: FeatureView, files: Files, feast: FeastWorker, rounds: int, folder: Path
) -> TrainingResult:
    """``rounds`` rounds of each side, in rotating order; then the answers compared."""
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    answers: dict[str, pa.Table] = {}
    feast_out = folder / "feast-training-set.parquet"
    for round_ in range(rounds):
        order = SIDES[round_ % 3 :] + SIDES[: round_ % 3]
        for side in order:
            if side == "feast":
                answer = feast.ask("historical", labels=str(files.labels), out=str(feast_out))
                seconds[side].append(float(answer["seconds"]))
                continue
            started = time.perf_counter()
            table = strata(view, files) if side == "strata" else raw_duckdb(files)
            seconds[side].append(time.perf_counter() - started)
            answers[side] = table
    answers["feast"] = pq.read_table(feast_out)
    ours = answers["strata"]
    labels = ours.num_rows
    return TrainingResult(
        rows=pq.read_metadata(files.rows).num_rows,
        labels=labels,
        entities=len(pq.read_table(files.rows, columns=[ENTITY]).column(ENTITY).unique()),
        seconds=seconds,
        median={side: statistics.median(values) for side, values in seconds.items()},
        feast_over_strata=paired_ratio(seconds["feast"], seconds["strata"]),
        strata_over_duckdb=paired_ratio(seconds["strata"], seconds["duckdb"]),
        comparisons={peer: compare(ours, answers[peer], FEATURES) for peer in ("duckdb", "feast")},
        nulls=ours.column(FEATURES[0]).null_count,
    )
