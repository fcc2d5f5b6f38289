"""The online store layout in Redis, and the reads and writes over it.

One hash per view and entity, ``strata:features:<view>:<entity>`` where
``<entity>`` is the JSON list of key values (``[42]``, ``["ann",7]``), with one
field per feature (its value as JSON; timestamps as epoch microseconds) and
``__event_time`` (epoch microseconds of the row the values come from). The
streamer writes it (``write_online``: one pipelined round trip per batch); the
streamer's ``GetOnlineFeatures`` and the gateway read it in-process
(``read_online``: one pipelined round trip for all entities and features;
``read_online_views``: the same for several views at once), so both apply the
same statuses:

- no hash (or no ``__event_time``): NOT_FOUND, the feature's default;
- ``now - event time >= ttl``: EXPIRED, the default;
- otherwise PRESENT, the stored value (the default when it is null).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio

from strata.core.errors import InvalidArgumentError, NotFoundError
from strata.transforms.definition import FeatureView, ResolvedFeature
from strata.transforms.streaming import EntityKey, FeatureRow
from strata.transforms.types import ColumnType, FeatureStatus, Scalar

_EVENT_TIME = "__event_time"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    return f"strata:features:{view.name}:{json.dumps(list(entity), separators=(',', ':'))}"


async def write_online(
    client: redis.asyncio.Redis, view: FeatureView, rows: Mapping[EntityKey, FeatureRow]
) -> None:
    """Store the PRESENT rows (e.g. what a batch of events changed) in one round trip."""
    features = view.resolved_features
    async with client.pipeline(transaction=False) as pipeline:
        for entity, row in rows.items():
            if row.status is not FeatureStatus.PRESENT or row.event_time is None:
                continue
            mapping: dict[str | bytes, bytes] = {
                f.name: _encode(f.type, row.values.get(f.name)) for f in features
            }
            mapping[_EVENT_TIME] = str(_micros(row.event_time)).encode()
            pipeline.hset(online_key(view, entity), mapping=mapping)  # type: ignore[arg-type]
        await pipeline.execute()


async def read_online(
    client: redis.asyncio.Redis,
    view: FeatureView,
    entities: Sequence[EntityKey],
    features: Sequence[str],
    now: datetime,
) -> list[list[OnlineValue]]:
    """``features`` of each entity at ``now``, in request order, in one round trip."""
    (rows,) = await read_online_views(client, [OnlineRead(view, entities, features)], now)
    return rows


@dataclass(frozen=True)
class OnlineRead:
    """One view's share of :func:`read_online_views`: its entities and the features wanted."""

    view: FeatureView
    entities: Sequence[EntityKey]
    features: Sequence[str]


async def read_online_views(
    client: redis.asyncio.Redis, reads: Sequence[OnlineRead], now: datetime
) -> list[list[list[OnlineValue]]]:
    """Each read's values as :func:`read_online` gives them, for every view in ONE round trip.

    A prediction needs the features of several views for a batch of rows; one
    pipeline for all of them costs one network round trip instead of one per view.
    """
    wanted = [_wanted(read.view, read.features) for read in reads]
    async with client.pipeline(transaction=False) as pipeline:
        for read, features in zip(reads, wanted, strict=True):
            fields = [_EVENT_TIME, *(feature.name for feature in features)]
            for entity in read.entities:
                pipeline.hmget(online_key(read.view, entity), fields)
        replies: list[list[bytes | None]] = await pipeline.execute()
    now_us = _micros(now)
    answers: list[list[list[OnlineValue]]] = []
    start = 0
    for read, features in zip(reads, wanted, strict=True):
        end = start + len(read.entities)
        answers.append(_rows(read.view, features, replies[start:end], now_us))
        start = end
    return answers


def _wanted(view: FeatureView, features: Sequence[str]) -> list[ResolvedFeature]:
    by_name = {f.name: f for f in view.resolved_features}
    wanted: list[ResolvedFeature] = []
    for name in features:
        feature = by_name.get(name)
        if feature is None:
            raise NotFoundError(f"feature '{view.name}:{name}'")
        wanted.append(feature)
    return wanted


def _rows(
    view: FeatureView,
    wanted: Sequence[ResolvedFeature],
    replies: Sequence[Sequence[bytes | None]],
    now_us: int,
) -> list[list[OnlineValue]]:
    """The statuses of the module docstring applied to one view's HMGET replies."""
    ttl = view.ttl_us
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
        row = []
        for feature, raw in zip(wanted, reply[1:], strict=True):
            value = _decode(feature.type, raw)
            value = feature.default if value is None else value
            row.append(OnlineValue(value, event_time, FeatureStatus.PRESENT))
        rows.append(row)
    return rows


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise InvalidArgumentError("now", f"time {moment} has no time zone")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _encode(kind: ColumnType, value: Scalar) -> bytes:
    if isinstance(value, datetime):
        return str(_micros(value)).encode()
    return json.dumps(value).encode()


def _decode(kind: ColumnType, raw: bytes | None) -> Scalar:
    if raw is None:
        return None
    value = json.loads(raw)
    if value is None:
        return None
    if kind is ColumnType.TIMESTAMP:
        return _EPOCH + timedelta(microseconds=int(value))
    if kind is ColumnType.DOUBLE:
        return float(value)
    decoded: Scalar = value
    return decoded
