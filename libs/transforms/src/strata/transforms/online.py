"""The online store layout in Redis, and the reads and writes over it.

One hash per view and entity, ``strata:features:2:<view>:<entity>`` where
``<entity>`` is the JSON list of key values (``[42]``, ``["ann",7]``), with

- ``__event_time``: epoch microseconds of the entity's latest event;
- one field per plain feature (its value in that latest row, as JSON;
  timestamps as epoch microseconds);
- ``__window`` (views with windowed features): the entity's events with event
  time in ``(latest - longest window, latest]``, as a JSON list of
  ``[event time, inputs...]`` in (event time, arrival) order, the inputs being the
  values of ``window_columns(view)``.

Windowed features are not stored as values but computed at read time from
``__window``: a ``count over 1h`` read two hours after the last event is 0, as
the batch path says, not the count at the last event. The read needs nothing
more than the same HMGET, so it stays one round trip. Why the events and not
partial aggregates per time bucket: buckets make the value exact only at bucket
edges, and the online value must equal the batch value at any read time; the
price is a hash that grows with an entity's events per longest window (as the
streaming executor's state does), which suits the per-entity event rates
feature views see (a busy entity with thousands of events per window is where
buckets would pay off, at the cost of that exactness).

The ``2`` in the key is the layout's version: hashes of the first layout (values
of windowed features frozen at the last event) live under keys without it and
read as NOT_FOUND, never as stale windows.

The streamer writes the hashes (``write_online``: one pipelined round trip per
batch, each hash given an expiry of the view's TTL plus its longest window,
renewed on every write, so idle entities do not keep Redis growing); the
streamer's ``GetOnlineFeatures`` and the gateway read them in-process
(``read_online``: one pipelined round trip for all entities and features;
``read_online_views``: the same for several views at once), so both apply the
same statuses:

- no hash (or no ``__event_time``): NOT_FOUND, the feature's default;
- ``now - event time >= ttl``: EXPIRED, the default;
- otherwise PRESENT, the value (the default when it is null): a plain feature's
  stored value; a windowed feature's aggregate over the ``__window`` events in
  ``(now - window, now]``. Reads are exact at or after the latest event time.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import redis.asyncio

from strata.core.errors import InvalidArgumentError, NotFoundError
from strata.core.redis_multiplexed import Meanwhile, MultiplexedConnection
from strata.transforms.definition import FeatureView, ResolvedFeature
from strata.transforms.streaming import EntityKey, FeatureRow, aggregate, window_columns
from strata.transforms.types import ColumnType, FeatureStatus, Scalar

_LAYOUT = 2
"""The version of the key layout (see the module docstring)."""
_EVENT_TIME = "__event_time"
_WINDOW = "__window"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCAN_BATCH = 1000
"""Keys asked for per SCAN step and removed per UNLINK."""
_KEY_JSON = json.JSONEncoder(separators=(",", ":"))
"""The entity part of a key, as ``json.dumps(..., separators=(",", ":"))`` writes it
(that builds an encoder per call, a cost on every read)."""


@dataclass(frozen=True)
class OnlineValue:
    """One feature of one entity as read from the online store."""

    value: Scalar
    event_time: datetime | None
    status: FeatureStatus


def online_key(view: FeatureView, entity: EntityKey) -> str:
    """The Redis key holding ``entity``'s online values of ``view``."""
    if len(entity) != len(view.entities):
        raise InvalidArgumentError(
            "entities",
            f"feature view {view.name!r} is keyed by {', '.join(view.entities)}; got {entity!r}",
        )
    return f"{key_prefix(view)}{_KEY_JSON.encode(list(entity))}"


def key_prefix(view: FeatureView) -> str:
    """What every key of ``view``'s online values starts with (for scans and keyspace events)."""
    return _prefix(view.name)


def _prefix(name: str) -> str:
    return f"strata:features:{_LAYOUT}:{name}:"


async def delete_online(client: redis.asyncio.Redis, name: str) -> int:
    """Remove every online hash of the view called ``name``; how many were removed.

    Keys are found with SCAN (never KEYS, which blocks the server) by the view's
    key prefix and removed with UNLINK (freed in the background) a batch at a
    time, so a view of millions of entities neither stalls Redis nor fills memory
    here. By name rather than by view, so a view whose stored spec no longer
    compiles can still be removed.
    """
    removed = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{_prefix(name)}*", count=_SCAN_BATCH):
        batch.append(key)
        if len(batch) == _SCAN_BATCH:
            removed += await client.unlink(*batch)
            batch = []
    if batch:
        removed += await client.unlink(*batch)
    return removed


async def write_online(
    client: redis.asyncio.Redis, view: FeatureView, rows: Mapping[EntityKey, FeatureRow]
) -> None:
    """Store the PRESENT rows (e.g. what a batch of events changed) in one round trip.

    Each row is an entity's features at its latest event time, with the events
    its windows cover (``StreamingExecutor.online_row``). A view with a TTL gives
    each hash it writes an expiry of the TTL plus its longest window, counted
    from the write (:func:`lifetime_ms`).
    """
    lifetime = lifetime_ms(view)
    async with client.pipeline(transaction=False) as pipeline:
        for entity, row in rows.items():
            if row.status is not FeatureStatus.PRESENT or row.event_time is None:
                continue
            mapping = encode_row(view, row)
            key = online_key(view, entity)
            pipeline.hset(key, mapping=mapping)  # type: ignore[arg-type]
            if lifetime is not None:
                pipeline.pexpire(key, lifetime)
        await pipeline.execute()


def lifetime_ms(view: FeatureView) -> int | None:
    """How long an entity's hash lives after its last write, in ms; None: for ever.

    An entity that stops sending events reads as EXPIRED once its latest event is
    ``ttl`` old, and nothing about it can read PRESENT again until it sends a new
    one (which writes the hash again, and renews this expiry): so an idle
    entity's hash need not stay in Redis for ever. The longest window on top is a
    margin for events whose event time lags their write. After the expiry the
    entity reads as NOT_FOUND instead of EXPIRED, with the same default values.
    Views without a TTL keep their hashes, since their values never expire.
    """
    if view.ttl_us is None:
        return None
    return -(-(view.ttl_us + view.max_window_us) // 1000)


def encode_row(view: FeatureView, row: FeatureRow) -> dict[str, bytes]:
    """The hash fields ``write_online`` stores for a PRESENT row (no I/O)."""
    assert row.event_time is not None, "a PRESENT row has an event time"
    mapping = {
        f.name: _encode(f.type, row.values.get(f.name))
        for f in view.resolved_features
        if f.function is None
    }
    mapping[_EVENT_TIME] = str(_micros(row.event_time)).encode()
    if view.max_window_us > 0:
        mapping[_WINDOW] = _encode_window(row)
    return mapping


def decode_row(
    view: FeatureView, features: Sequence[str], stored: Mapping[str, bytes], now: datetime
) -> list[OnlineValue]:
    """``features`` at ``now`` from one entity's hash as ``read_online`` reads it (no I/O)."""
    selection = select(view, features)
    reply = [stored.get(field) for field in selection.fields]
    (row,) = _rows(selection, [reply], _micros(now))
    return row


async def read_online(
    connection: MultiplexedConnection,
    view: FeatureView,
    entities: Sequence[EntityKey],
    features: Sequence[str],
    now: datetime,
) -> list[list[OnlineValue]]:
    """``features`` of each entity at ``now``, in request order, in one round trip."""
    read = OnlineRead(select(view, features), entities)
    (rows,) = await read_online_views(connection, [read], now)
    return rows


@dataclass(frozen=True)
class Selection:
    """Some features of one view, resolved for reading: what the HMGET of an entity asks
    for, and how its reply becomes values.

    Made by :func:`select` from the view's definition. A reader that asks for the same
    features call after call makes it once: a model version's feature plan holds one
    per view it reads (:class:`strata.transforms.featurize.FeaturePlan`), so a
    prediction resolves nothing per call.
    """

    view: FeatureView
    features: tuple[str, ...]
    wanted: tuple[ResolvedFeature, ...]
    fields: tuple[str, ...]
    """The hash fields read: the event time, the plain values, then the window if any."""
    parsers: tuple[Callable[[bytes], Scalar] | None, ...]
    """Per wanted feature: the parser of its stored value; None for a windowed one."""
    windowed: bool
    window_columns: tuple[str, ...]
    window_kinds: tuple[ColumnType, ...]
    prefix: str

    def key(self, entity: EntityKey) -> str:
        """The Redis key of ``entity``'s hash (:func:`online_key`)."""
        if len(entity) != len(self.view.entities):
            return online_key(self.view, entity)  # raises, naming the view's key columns
        if len(entity) == 1 and type(entity[0]) is int:
            return f"{self.prefix}[{entity[0]}]"  # the JSON of [n], without the encoder
        return f"{self.prefix}{_KEY_JSON.encode(list(entity))}"


def select(view: FeatureView, features: Sequence[str]) -> Selection:
    """``features`` of ``view`` resolved for reading; NotFoundError names an unknown one."""
    by_name = {f.name: f for f in view.resolved_features}
    wanted: list[ResolvedFeature] = []
    for name in features:
        feature = by_name.get(name)
        if feature is None:
            raise NotFoundError(f"feature '{view.name}:{name}'")
        wanted.append(feature)
    windowed = any(f.function is not None for f in wanted)
    fields = [_EVENT_TIME, *(f.name for f in wanted if f.function is None)]
    if windowed:
        fields.append(_WINDOW)
    columns = window_columns(view)
    return Selection(
        view=view,
        features=tuple(features),
        wanted=tuple(wanted),
        fields=tuple(fields),
        parsers=tuple(_PARSERS[f.type] if f.function is None else None for f in wanted),
        windowed=windowed,
        window_columns=columns,
        window_kinds=tuple(view.columns[name] for name in columns),
        prefix=key_prefix(view),
    )


@dataclass(frozen=True)
class OnlineRead:
    """One view's share of :func:`read_online_views`: its entities and the features wanted."""

    selection: Selection
    entities: Sequence[EntityKey]

    @property
    def view(self) -> FeatureView:
        return self.selection.view

    @property
    def features(self) -> tuple[str, ...]:
        return self.selection.features


async def read_online_views(
    connection: MultiplexedConnection,
    reads: Sequence[OnlineRead],
    now: datetime,
    meanwhile: Meanwhile | None = None,
) -> list[list[list[OnlineValue]]]:
    """Each read's values as :func:`read_online` gives them, for every view in ONE round trip.

    A prediction needs the features of several views for a batch of rows; one
    pipeline for all of them costs one network round trip instead of one per view.
    The reads go over the shared multiplexed connection
    (:mod:`strata.core.redis_multiplexed`), not redis-py's pool, which costs more
    than the round trip itself. ``meanwhile`` runs while the replies are on their way.
    """
    commands = [
        ("HMGET", read.selection.key(entity), *read.selection.fields)
        for read in reads
        for entity in read.entities
    ]
    replies: list[list[bytes | None]] = await connection.execute(*commands, meanwhile=meanwhile)
    now_us = _micros(now)
    answers: list[list[list[OnlineValue]]] = []
    start = 0
    for read in reads:
        end = start + len(read.entities)
        answers.append(_rows(read.selection, replies[start:end], now_us))
        start = end
    return answers


def _rows(
    selection: Selection, replies: Sequence[Sequence[bytes | None]], now_us: int
) -> list[list[OnlineValue]]:
    """The statuses of the module docstring applied to one view's HMGET replies."""
    ttl = selection.view.ttl_us
    wanted = selection.wanted
    rows: list[list[OnlineValue]] = []
    for reply in replies:
        stamp = reply[0]
        if stamp is None:
            rows.append([OnlineValue(f.default, None, FeatureStatus.NOT_FOUND) for f in wanted])
            continue
        event_us = int(stamp)
        event_time = _EPOCH + timedelta(microseconds=event_us)
        if ttl is not None and now_us - event_us >= ttl:
            rows.append([OnlineValue(f.default, event_time, FeatureStatus.EXPIRED) for f in wanted])
            continue
        window = _Window(selection.window_kinds, reply[-1], now_us) if selection.windowed else None
        stored = iter(reply[1:])
        row = []
        for feature, parse in zip(wanted, selection.parsers, strict=True):
            if parse is not None:
                raw = next(stored)
                value = None if raw is None or raw == b"null" else parse(raw)
            else:
                assert window is not None, "a windowed feature makes the selection windowed"
                value = window.value(feature, selection.window_columns)
            value = feature.default if value is None else value
            row.append(OnlineValue(value, event_time, FeatureStatus.PRESENT))
        rows.append(row)
    return rows


class _Window:
    """An entity's ``__window`` events up to ``now``, decoded on first use."""

    def __init__(self, kinds: Sequence[ColumnType], raw: bytes | None, now_us: int) -> None:
        self._kinds = kinds
        self._raw = raw
        self._now_us = now_us
        self._times: list[int] | None = None
        self._inputs: list[list[Scalar]] = []

    def value(self, feature: ResolvedFeature, columns: Sequence[str]) -> Scalar:
        """``feature``'s aggregate over the events in ``(now - window, now]``."""
        if self._times is None:
            self._decode()
        assert self._times is not None
        assert feature.window_us is not None
        start = bisect.bisect_right(self._times, self._now_us - feature.window_us)
        if feature.column is None:
            return aggregate(feature, [None] * (len(self._times) - start))
        values = self._inputs[columns.index(feature.column)]
        return aggregate(feature, values[start:])

    def _decode(self) -> None:
        events = json.loads(self._raw) if self._raw is not None else []
        end = bisect.bisect_right(events, self._now_us, key=itemgetter(0))
        columns = list(zip(*events[:end], strict=True)) if end else [()] * (1 + len(self._kinds))
        self._times = list(columns[0])
        self._inputs = [
            [_decoded(kind, value) for value in column]
            if kind is ColumnType.TIMESTAMP
            else list(column)  # JSON gives these their Python type already
            for kind, column in zip(self._kinds, columns[1:], strict=True)
        ]


def _encode_window(row: FeatureRow) -> bytes:
    events = [
        [
            event.time_us,
            *(_encoded(value) for value in event.inputs),
        ]
        for event in row.window
    ]
    return json.dumps(events, separators=(",", ":")).encode()


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise InvalidArgumentError("now", f"time {moment} has no time zone")
    since = moment - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def _encode(kind: ColumnType, value: Scalar) -> bytes:
    """A plain value as stored: its JSON text (timestamps as epoch microseconds).

    Integers and finite floats are written by ``repr``, which is the text
    ``json.dumps`` gives them, without its per-call machinery: the streamer
    encodes every plain feature of every entity a batch touches.
    """
    if isinstance(value, datetime):
        return str(_micros(value)).encode()
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value).encode()
    return json.dumps(value).encode()


def _encoded(value: Scalar) -> Scalar:
    """A value as it sits in the ``__window`` JSON (timestamps as epoch microseconds)."""
    return _micros(value) if isinstance(value, datetime) else value


def _timestamp(raw: bytes) -> datetime:
    return _EPOCH + timedelta(microseconds=int(raw))


_PARSERS: dict[ColumnType, Callable[[bytes], Scalar]] = {
    # A stored plain value is JSON (timestamps as epoch microseconds; null is None).
    # JSON's integer and number texts (NaN and Infinity as json.dumps writes them)
    # are what int() and float() read, at a fraction of json.loads' cost per value.
    ColumnType.INT64: int,
    ColumnType.DOUBLE: float,
    ColumnType.BOOL: lambda raw: raw == b"true",
    ColumnType.TIMESTAMP: _timestamp,
    ColumnType.STRING: json.loads,
}


def _decoded(kind: ColumnType, value: Any) -> Scalar:
    """A JSON-decoded value as the feature's type."""
    if value is None:
        return None
    if kind is ColumnType.TIMESTAMP:
        return _EPOCH + timedelta(microseconds=int(value))
    if kind is ColumnType.DOUBLE:
        return float(value)
    decoded: Scalar = value
    return decoded
