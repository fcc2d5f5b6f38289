"""The streaming path: incremental window state fed records as they arrive.

A ``StreamingExecutor`` keeps, per entity, the rows its features still need,
ordered by event time: records are transformed in batches (the same compiled
Arrow expressions as the batch path), then folded into the state one by one in
arrival order. ``read`` answers the features of one entity at a time ``at`` no
earlier than the entity's latest event time, the time an online read asks about.

The rules are those of ``strata.transforms.batch`` (see its docstring), applied
as records arrive: a record more than the allowed lateness behind its entity's
latest event time is dropped and counted as late; a record identical to a kept
one is counted as a duplicate and dropped; a record with a null key or event
time is counted as invalid and dropped.

State per entity holds the rows with event time at or after ``latest - max(allowed
lateness, longest window)``: older rows can neither fall in a window read at or
after the latest event time, nor match a record that is not late. ``snapshot``
and ``restore`` carry that state (and the counters) as Arrow IPC bytes, so a
streamer can checkpoint it beside its Kafka offsets.

``online_row`` is what the streamer stores online for an entity: its features at
its latest event time plus the rows its windows still cover (``WindowRow``), so
that an online read later than the last event slides the windows itself
(``strata.transforms.online``) with the same ``aggregate`` as ``read``.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from strata.core.errors import InvalidArgumentError
from strata.transforms.definition import AggregationFunction, FeatureView, ResolvedFeature
from strata.transforms.rows import conformed, source_schema, table_from_records, transformed
from strata.transforms.types import ColumnType, FeatureStatus, Scalar

EntityKey = tuple[Scalar, ...]
"""An entity's key values, in the view's ``entities`` order."""


@dataclass(frozen=True)
class WindowRow:
    """An accepted event an entity's windows may still cover, as the online store keeps it."""

    time_us: int
    """Event time, microseconds since the epoch."""
    inputs: tuple[Scalar, ...]
    """The event's values of ``window_columns(view)``, in that order."""


@dataclass(frozen=True)
class FeatureRow:
    """One entity's features at a read time.

    ``window`` holds, when the row is meant for the online store, the entity's
    rows with event time in ``(event_time - longest window, event_time]`` in
    (event time, arrival) order: everything a windowed feature read at or after
    ``event_time`` can cover. Without it, the windows read online are empty.
    """

    values: Mapping[str, Scalar]
    event_time: datetime | None
    status: FeatureStatus
    window: tuple[WindowRow, ...] = ()


def window_columns(view: FeatureView) -> tuple[str, ...]:
    """The input columns of the view's windowed features (COUNT needs none), sorted."""
    return tuple(
        sorted({f.column for f in view.resolved_features if f.function is not None and f.column})
    )


@dataclass
class IngestCounts:
    """What became of the records fed so far."""

    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    invalid: int = 0


@dataclass(order=True)
class _Row:
    time_us: int
    arrival: int
    source: tuple[Scalar, ...] = field(compare=False)
    """The source columns' values (timestamps as epoch microseconds: cheaper from Arrow)."""
    inputs: tuple[Scalar, ...] = field(compare=False)


class StreamingExecutor:
    """Window state of one feature view, for any number of entities."""

    def __init__(self, view: FeatureView) -> None:
        if not view.event_time:
            raise InvalidArgumentError(
                f"feature_view[{view.name}].event_time",
                "request-time views have no stream to follow",
            )
        self.view = view
        self.counts = IngestCounts()
        self._entities: dict[EntityKey, list[_Row]] = {}
        self._next_arrival = 0
        self._source_names = source_schema(view).names
        self._inputs = sorted({f.column for f in view.resolved_features if f.column})
        self._features = view.resolved_features
        self._ttl_us = view.ttl_us
        self._positions = {
            f.name: self._inputs.index(f.column) if f.column else -1 for f in self._features
        }
        self._retention_us = max(view.lateness_us, view.max_window_us)
        self._window_positions = [self._inputs.index(c) for c in window_columns(view)]

    def ingest(self, records: pa.Table | Sequence[Mapping[str, Scalar]]) -> set[EntityKey]:
        """Fold records, in arrival order, into the state; return the entities they touched."""
        table = (
            conformed(self.view, records)
            if isinstance(records, pa.Table)
            else table_from_records(self.view, records)
        )
        rows = transformed(self.view, table)
        times = pc.cast(rows.column(self.view.event_time), pa.int64())
        touched: set[EntityKey] = set()
        keys = _tuples(rows, self.view.entities)
        sources = _tuples(_times_as_micros(rows.select(self._source_names)), self._source_names)
        inputs = _tuples(rows, self._inputs)
        for key, time_us, source, values in zip(
            keys, times.to_pylist(), sources, inputs, strict=True
        ):
            if time_us is None or any(part is None for part in key):
                self.counts.invalid += 1
                continue
            if self._fold(key, _Row(time_us, self._next_arrival, source, values)):
                touched.add(key)
            self._next_arrival += 1
        return touched

    def _fold(self, key: EntityKey, row: _Row) -> bool:
        state = self._entities.setdefault(key, [])
        if state and row.time_us < state[-1].time_us - self.view.lateness_us:
            self.counts.late += 1
            return False
        start = bisect.bisect_left(state, row.time_us, key=lambda kept: kept.time_us)
        for kept in state[start:]:
            if kept.time_us != row.time_us:
                break
            if kept.source == row.source:
                self.counts.duplicates += 1
                return False
        bisect.insort(state, row)
        horizon = state[-1].time_us - self._retention_us
        drop = bisect.bisect_left(state, horizon, key=lambda kept: kept.time_us)
        if drop:
            del state[:drop]
        self.counts.accepted += 1
        return True

    def entities(self) -> Iterable[EntityKey]:
        """Every entity with state."""
        return self._entities.keys()

    def watermark(self, key: EntityKey) -> datetime | None:
        """The entity's latest accepted event time; reads are exact at or after it."""
        state = self._entities.get(key)
        return _time(state[-1].time_us) if state else None

    def read(self, key: EntityKey, at: datetime) -> FeatureRow:
        """The entity's features at ``at`` (at or after its watermark, as online reads are)."""
        return self._read(self._entities.get(key, []), _micros(at))

    def _read(self, state: list[_Row], at_us: int) -> FeatureRow:
        end = bisect.bisect_right(state, at_us, key=lambda kept: kept.time_us)
        features = self._features
        if end == 0:
            return FeatureRow({f.name: f.default for f in features}, None, FeatureStatus.NOT_FOUND)
        latest = state[end - 1]
        ttl = self._ttl_us
        if ttl is not None and at_us - latest.time_us >= ttl:
            values = {f.name: f.default for f in features}
            return FeatureRow(values, _time(latest.time_us), FeatureStatus.EXPIRED)
        values = {}
        for feature in features:
            value = self._value(feature, state, end, at_us, latest)
            values[feature.name] = feature.default if value is None else value
        return FeatureRow(values, _time(latest.time_us), FeatureStatus.PRESENT)

    def online_row(self, key: EntityKey) -> FeatureRow:
        """The entity's features at its latest event time, with the rows its windows cover."""
        state = self._entities.get(key, [])
        if not state:
            return self._read(state, 0)
        latest = state[-1].time_us
        row = self._read(state, latest)
        if not self.view.max_window_us:
            return row
        horizon = latest - self.view.max_window_us
        start = bisect.bisect_right(state, horizon, key=lambda kept: kept.time_us)
        window = tuple(
            WindowRow(kept.time_us, tuple(kept.inputs[p] for p in self._window_positions))
            for kept in state[start:]
        )
        return FeatureRow(row.values, row.event_time, row.status, window)

    def _value(
        self, feature: ResolvedFeature, state: list[_Row], end: int, at_us: int, latest: _Row
    ) -> Scalar:
        position = self._positions[feature.name]
        if feature.function is None:
            return latest.inputs[position]
        assert feature.window_us is not None
        start = bisect.bisect_right(state, at_us - feature.window_us, key=lambda kept: kept.time_us)
        window = state[start:end]
        return aggregate(
            feature, [row.inputs[position] if feature.column else None for row in window]
        )

    def snapshot(self) -> bytes:
        """The state and counters as Arrow IPC bytes, for ``restore``."""
        columns: dict[str, list[Scalar]] = {"__key": [], "__t": [], "__arrival": []}
        for name in self._source_names:
            columns[name] = []
        for key, state in self._entities.items():
            for row in state:
                columns["__key"].append(json.dumps(list(key)))
                columns["__t"].append(row.time_us)
                columns["__arrival"].append(row.arrival)
                for name, value in zip(self._source_names, row.source, strict=True):
                    columns[name].append(value)
        schema = source_schema(self.view)
        fields = [pa.field("__key", pa.string()), pa.field("__t", pa.int64())]
        fields += [pa.field("__arrival", pa.int64()), *schema]
        metadata = {
            "view": self.view.name,
            "next_arrival": str(self._next_arrival),
            "counts": json.dumps(self.counts.__dict__),
        }
        table = pa.table(columns, schema=pa.schema(fields, metadata=metadata))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    @classmethod
    def restore(cls, view: FeatureView, snapshot: bytes) -> StreamingExecutor:
        """An executor holding the state ``snapshot`` captured."""
        table = pa.ipc.open_stream(snapshot).read_all()
        metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if metadata.get("view") != view.name:
            raise InvalidArgumentError(
                "snapshot", f"the snapshot is of view {metadata.get('view')!r}, not {view.name!r}"
            )
        executor = cls(view)
        executor._next_arrival = int(metadata["next_arrival"])
        executor.counts = IngestCounts(**json.loads(metadata["counts"]))
        rows = transformed(view, conformed(view, table))
        keys = table.column("__key").to_pylist()
        times = table.column("__t").to_pylist()
        arrivals = table.column("__arrival").to_pylist()
        sources = _tuples(
            _times_as_micros(rows.select(executor._source_names)), executor._source_names
        )
        inputs = _tuples(rows, executor._inputs)
        for key, time_us, arrival, source, values in zip(
            keys, times, arrivals, sources, inputs, strict=True
        ):
            state = executor._entities.setdefault(tuple(json.loads(key)), [])
            bisect.insort(state, _Row(time_us, arrival, source, values))
        return executor


def _tuples(table: pa.Table, names: Sequence[str]) -> list[tuple[Scalar, ...]]:
    """The values of ``names`` row by row (empty tuples when there are no names)."""
    if not names:
        return [()] * table.num_rows
    return list(zip(*(table.column(name).to_pylist() for name in names), strict=True))


def _times_as_micros(table: pa.Table) -> pa.Table:
    """``table`` with its timestamp columns as epoch microseconds (int64)."""
    for position, kind in enumerate(table.schema.types):
        if pa.types.is_timestamp(kind):
            column = table.column(position).cast(pa.int64())
            table = table.set_column(position, table.field(position).name, column)
    return table


def aggregate(feature: ResolvedFeature, window: Sequence[Scalar]) -> Scalar:
    """``feature``'s aggregation over its input values in the window, in (event time, arrival)
    order: COUNT counts the rows, the others ignore nulls (SUM of none is 0)."""
    function = feature.function
    if function is AggregationFunction.COUNT:
        return len(window)
    present = [value for value in window if value is not None]
    if function is AggregationFunction.SUM:
        total = sum(present, 0.0 if feature.type is ColumnType.DOUBLE else 0)
        return total
    if not present:
        return None
    if function is AggregationFunction.MEAN:
        return sum(present) / len(present)  # type: ignore[arg-type]
    if function is AggregationFunction.MIN:
        return min(present)
    if function is AggregationFunction.MAX:
        return max(present)
    return present[-1]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    # Plain datetime arithmetic: exact for microsecond timestamps, as Arrow's cast is,
    # at a small fraction of the cost of a round trip through Arrow scalars per value.
    if moment.tzinfo is None:
        raise InvalidArgumentError("at", f"read time {moment} has no time zone")
    return (moment - _EPOCH) // _MICROSECOND


def _time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
