"""The batch path: feature values per entity as of given times, on DuckDB over Arrow.

``feature_values`` answers, for every row of a *spine* (entity keys and a read
time ``at``), the value each feature of the view had at ``at``: point-in-time
correct (no row later than ``at`` is seen), TTL honoured, defaults served. Row
transforms run first as Arrow compute over the whole table; the rest is one
DuckDB query (window functions, an ASOF join for the latest row, a range join for
the windows), so no Python loop touches a row.

The rules, shared with ``strata.transforms.streaming`` word for word:

- Rows with a null entity key or event time are invalid and ignored.
- **Lateness.** Rows are taken in arrival order (``arrival`` column, e.g. the
  Kafka offset; row order when absent). A row whose event time is more than the
  view's allowed lateness behind the latest event time of the same entity's
  earlier rows is late and dropped. Kafka keeps the order of one key (entity), so
  this rule sees the same order in both paths.
- **Duplicates.** A row identical in every source column to an earlier accepted
  row is the same event delivered twice and counts once.
- **Latest row.** The entity's latest row at ``at`` is the one with the greatest
  event time not after ``at``; ties go to the later arrival.
- **Status.** No such row: NOT_FOUND. ``at - latest event time >= ttl``: EXPIRED.
  Otherwise PRESENT. The value's event time is the latest row's.
- **Values.** A plain feature is its column in the latest row. An aggregation
  covers the rows with event time in ``(at - window, at]``: COUNT counts them,
  SUM (0 when empty), MEAN, MIN, MAX ignore nulls, LAST is the latest non-null
  value. A value that is null, NOT_FOUND or EXPIRED is the feature's default.

The query applies the lateness, duplicate and tie-break rules as passes over all
rows (two window functions and a grouping over every column), which cost most of
its time. Each pass is left out when a check over the rows in table order, linear
and vectorised, proves that it cannot change the answer (:func:`rules_needed`):

- no row can be late when arrivals strictly increase down the table and event
  times never decrease: every earlier arrival of an entity then has an event time
  at or before the row's, so the row is never behind their latest;
- no row can be a duplicate, nor tie with another row for "the latest", when
  event times strictly increase down the table: no two rows share an entity and
  an event time, and a duplicate or a tie needs both.

Offline data landed in arrival order with distinct event times (one partition of
a topic, a file in time order) skips all three; anything else runs them all, so
the answer is the same either way (``tests/unit/test_transforms_batch.py`` runs
both queries over the same rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import AggregationFunction, FeatureView, ResolvedFeature
from strata.transforms.rows import conformed, transformed
from strata.transforms.types import ColumnType, FeatureStatus


@dataclass(frozen=True)
class BatchValues:
    """Feature values for each spine row, in spine order."""

    values: pa.Table
    """One column per feature of the view."""
    event_times: pa.ChunkedArray
    """Event time of the latest row each value comes from; null when NOT_FOUND."""
    statuses: pa.ChunkedArray
    """A ``FeatureStatus`` value (its string) per spine row."""


def feature_values(
    view: FeatureView, rows: pa.Table, spine: pa.Table, at: str = "at", arrival: str | None = None
) -> BatchValues:
    """The view's features for each spine row (entity keys and ``at``), from source ``rows``."""
    if not view.event_time:
        raise InvalidArgumentError(
            f"feature_view[{view.name}].event_time", "request-time views have no history to read"
        )
    events = transformed(view, conformed(view, rows))
    events = events.append_column("__arrival", _arrival(view, rows, arrival))
    points = _spine(view, spine, at)
    connection = duckdb.connect()
    try:
        connection.register("events", events)
        connection.register("spine", points)
        result = connection.sql(_query(view, rules_needed(view, events))).to_arrow_table()
    finally:
        connection.close()
    return _assemble(view, result)


def _arrival(view: FeatureView, rows: pa.Table, arrival: str | None) -> pa.ChunkedArray:
    if arrival is None:
        return _positions(rows.num_rows)
    if arrival not in rows.column_names:
        raise InvalidArgumentError(
            "arrival", f"the rows of feature view {view.name!r} lack arrival column {arrival!r}"
        )
    return rows.column(arrival).cast(pa.int64())


@dataclass(frozen=True)
class Rules:
    """Which of the row rules' passes the query runs (see the module docstring)."""

    lateness: bool = True
    duplicates_and_ties: bool = True


def rules_needed(view: FeatureView, events: pa.Table) -> Rules:
    """The passes that can change the answer over ``events`` (with ``__arrival``), in table
    order; a pass is skipped only when the check proves it cannot."""
    keys = [events.column(key) for key in view.entities]
    times = events.column(view.event_time)
    if times.null_count or any(key.null_count for key in keys):
        return Rules()
    rising = _steps(times.cast(pa.int64()))
    if rising is None:
        return Rules()
    arrivals = _steps(events.column("__arrival"))
    return Rules(
        lateness=not (rising >= 0 and arrivals is not None and arrivals > 0),
        duplicates_and_ties=not rising > 0,
    )


def _steps(column: pa.ChunkedArray) -> int | None:
    """The smallest difference between a value and the one before it (None: under 2 rows)."""
    values = column.combine_chunks()
    if len(values) < 2 or values.null_count:
        return None
    smallest = pc.min(pc.subtract(values[1:], values[:-1])).as_py()
    return None if smallest is None else int(smallest)


def _positions(count: int) -> pa.ChunkedArray:
    ones = pa.chunked_array([pa.repeat(pa.scalar(1, pa.int64()), count)], type=pa.int64())
    return pc.subtract(pc.cumulative_sum(ones), 1)


def _spine(view: FeatureView, spine: pa.Table, at: str) -> pa.Table:
    types = view.columns
    columns: dict[str, pa.ChunkedArray] = {}
    for name in (*view.entities, at):
        if name not in spine.column_names:
            raise InvalidArgumentError(
                f"spine.{name}", f"the spine for feature view {view.name!r} lacks column {name!r}"
            )
    for key in view.entities:
        columns[key] = spine.column(key).cast(types[key].arrow)
    columns["__at"] = spine.column(at).cast(ColumnType.TIMESTAMP.arrow)
    columns["__row"] = _positions(spine.num_rows)
    return pa.table(columns)


def _quote(name: str) -> str:
    return f'"{name}"'


def _query(view: FeatureView, rules: Rules) -> str:
    keys = ", ".join(_quote(key) for key in view.entities)
    joined = " AND ".join(f"s.{_quote(key)} = r.{_quote(key)}" for key in view.entities)
    valid = " AND ".join(f"{_quote(key)} IS NOT NULL" for key in view.entities)
    event_time = _quote(view.event_time)
    data = ", ".join(_quote(name) for name in view.columns)
    plain = [f for f in view.resolved_features if f.function is None]
    windowed = [f for f in view.resolved_features if f.function is not None]
    ttl = view.ttl_us
    expired = f"WHEN p.__at - p.__last_t >= {ttl} THEN 'expired'" if ttl is not None else ""
    point_values = "".join(f", r.{_quote(f.column or '')} AS {_quote(f.name)}" for f in plain)
    selected = ", ".join(f"{_quote(f.name)}" for f in view.resolved_features)
    windows = ""
    window_join = ""
    if windowed:
        aggregates = ", ".join(f"{_aggregate(f)} AS {_quote(f.name)}" for f in windowed)
        windows = f""",
windows AS (
  SELECT s.__row, {aggregates}
  FROM spine s LEFT JOIN ordered r
    ON {joined} AND r.__t <= epoch_us(s.__at) AND r.__t > epoch_us(s.__at) - {view.max_window_us}
  GROUP BY s.__row
)"""
        window_join = "JOIN windows w ON w.__row = p.__row"
    accepted = "SELECT * FROM ev"
    if rules.lateness:
        accepted += f"""
  QUALIFY __t >= coalesce(max(__t) OVER (PARTITION BY {keys} ORDER BY __arrival
    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), __t) - {view.lateness_us}"""
    kept = f"SELECT {data}, __t, __arrival FROM accepted"
    latest = "SELECT * FROM ordered"
    if rules.duplicates_and_ties:
        kept = f"SELECT {data}, __t, min(__arrival) AS __arrival FROM accepted GROUP BY ALL"
        latest += f"""
  QUALIFY row_number() OVER (PARTITION BY {keys}, __t ORDER BY __arrival DESC) = 1"""
    ordered = "SELECT * FROM kept"
    if any(f.function is AggregationFunction.LAST for f in windowed):
        ordered = (
            f"SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY __t, __arrival) AS __ord "
            "FROM kept"
        )
    return f"""
WITH ev AS (
  SELECT *, epoch_us({event_time}) AS __t FROM events WHERE {valid} AND {event_time} IS NOT NULL
),
accepted AS (
  {accepted}
),
kept AS (
  {kept}
),
ordered AS (
  {ordered}
),
latest AS (
  {latest}
),
point AS (
  SELECT s.__row, epoch_us(s.__at) AS __at, r.__t AS __last_t{point_values}
  FROM spine s ASOF LEFT JOIN latest r ON {joined} AND epoch_us(s.__at) >= r.__t
){windows}
SELECT p.__last_t,
  CASE WHEN p.__last_t IS NULL THEN 'not_found' {expired}
    ELSE 'present' END AS __status,
  {selected}
FROM point p {window_join}
ORDER BY p.__row
"""


def _aggregate(feature: ResolvedFeature) -> str:
    inside = f"r.__t > epoch_us(s.__at) - {feature.window_us}"
    column = f"r.{_quote(feature.column)}" if feature.column else "r.__t"
    sql_type = "DOUBLE" if feature.type is ColumnType.DOUBLE else "BIGINT"
    function = feature.function
    if function is AggregationFunction.COUNT:
        return f"count(r.__t) FILTER (WHERE {inside})"
    if function is AggregationFunction.SUM:
        return f"CAST(coalesce(sum({column}) FILTER (WHERE {inside}), 0) AS {sql_type})"
    if function is AggregationFunction.MEAN:
        return f"CAST(avg({column}) FILTER (WHERE {inside}) AS DOUBLE)"
    if function is AggregationFunction.MIN:
        return f"min({column}) FILTER (WHERE {inside})"
    if function is AggregationFunction.MAX:
        return f"max({column}) FILTER (WHERE {inside})"
    return f"arg_max({column}, r.__ord) FILTER (WHERE {inside} AND {column} IS NOT NULL)"


def _assemble(view: FeatureView, result: pa.Table) -> BatchValues:
    statuses = result.column("__status")
    present = pc.equal(statuses, FeatureStatus.PRESENT.value)
    columns: dict[str, pa.ChunkedArray] = {}
    for feature in view.resolved_features:
        default = pa.scalar(feature.default, feature.type.arrow)
        value = result.column(feature.name).cast(feature.type.arrow)
        columns[feature.name] = pc.if_else(present, pc.coalesce(value, default), default)
    event_times = result.column("__last_t").cast(pa.int64()).cast(ColumnType.TIMESTAMP.arrow)
    return BatchValues(pa.table(columns), event_times, statuses)
