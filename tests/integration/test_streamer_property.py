"""The property the feature store rests on, against the real streamer and broker.

Hypothesis generates event logs (several entities, out-of-order arrival within
and beyond the allowed lateness, exact duplicates, gaps longer than the TTL, a
read some time after the last event) and produces each to a fresh topic that a
fresh view follows, in ONE ``python -m strata.streamer`` process for the module.
Once the streamer has committed the last offset (it commits after the online
write), ``GetOnlineFeatures`` must give, for every feature of every entity, the
value, status and event time the batch path computes over the same events at
the time of the read, and the request-time path must give the plain features
from the latest row. The online read library is also asked, over the same real
Redis hashes, at later times: the windows slide to each.

The read time: ``GetOnlineFeatures`` reads at the server's clock, which the test
cannot set, and giving the server a settable clock would be a test hook in
production code. Instead every event time, window, TTL and lateness is a whole
number of ``UNIT`` before an anchor ``A`` (the test's clock when the example
starts); the values can then change only at ``A + n * UNIT``, so any read in
``(A, A + UNIT)`` must give the batch value at any other time in it. An example
whose read ends later than that (a machine stalled for minutes) is discarded, not
failed.

A mismatch prints the smallest failing log (hypothesis shrinks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from service_processes import ServiceProcess, running

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core import kafka
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.core.settings import KafkaSettings, RedisSettings, load
from strata.core.topics import dead_letter_topic
from strata.streamer.domain.raw_events import decode
from strata.streamer.values import scalar
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
from strata.transforms.online import read_online
from strata.transforms.request import request_features
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType, Scalar

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for the stream: a guard against hanging, not a timing check."""
TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
DEV = (("authorization", "Bearer dev-token"),)
KAFKA = load(KafkaSettings)
UNIT = timedelta(minutes=2)
"""Every time in a log is a whole number of these before the anchor (see the docstring)."""
F = AggregationFunction
COURIERS = [1, 2, 3, 4]
"""Couriers read; the logs have events of 1 to 3 only, so 4 is never found."""
LATER = [0, 2, 5, 9]
"""Further reads through the library, at ``A + (n + 1/2) * UNIT``."""

Event = tuple[int, int, int | None, float | None, str]
"""(courier_id, units before the anchor, amount, price, kind): short when printed."""


def courier_view(topic: str, lateness: int) -> FeatureView:
    """A fresh view on ``topic``: every window, the TTL and the lateness in whole UNITs."""

    def units(count: int) -> timedelta:
        return UNIT * count

    return FeatureView(
        name=f"prop_{uuid.uuid4().hex[:12]}",
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            topic,
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
            Transform("label", 'lower(kind) + "_x" if price > 1 else kind'),
        ),
        features=(
            Feature("orders_3u", aggregation=Aggregation(F.COUNT, units(3))),
            Feature("amount_3u", column="amount", aggregation=Aggregation(F.SUM, units(3))),
            Feature("price_mean_5u", column="price", aggregation=Aggregation(F.MEAN, units(5))),
            Feature("amount_min_5u", column="amount", aggregation=Aggregation(F.MIN, units(5))),
            Feature("price_max_3u", column="price", aggregation=Aggregation(F.MAX, units(3))),
            Feature("label_last_5u", column="label", aggregation=Aggregation(F.LAST, units(5))),
            Feature("total", default=-1),
            Feature("price", default=-1.0),
        ),
        ttl=units(8),
        allowed_lateness=units(lateness),
    )


@st.composite
def event_logs(draw: st.DrawFn) -> list[Event]:
    """Events in arrival order: a clock that advances (sometimes past the TTL), events up
    to 7 units behind it (within or beyond the allowed lateness), replays, and an idle
    time between the last event and the anchor."""
    log: list[Event] = []
    clock = 0
    for _ in range(draw(st.integers(1, 12))):
        if log and draw(st.integers(0, 5)) == 0:
            log.append(draw(st.sampled_from(log)))
            continue
        clock += draw(st.sampled_from([0, 0, 1, 2, 3, 9]))
        at = clock - draw(st.sampled_from([0, 0, 0, 1, 2, 4, 7]))
        amount = draw(st.none() | st.integers(-5, 20))
        price = draw(st.none() | st.integers(0, 20).map(lambda n: n / 2))
        kind = draw(st.sampled_from(["A", "b", "Cc"]))
        log.append((draw(st.integers(1, 3)), at, amount, price, kind))
    end = max(event[1] for event in log) + draw(st.sampled_from([0, 1, 3, 5, 9]))
    return [(c, end - at, amount, price, kind) for c, at, amount, price, kind in log]


def raw_event(event: Event, anchor: datetime) -> bytes:
    courier_id, before, amount, price, kind = event
    document = {
        "courier_id": courier_id,
        "event_time": (anchor - UNIT * before).isoformat(),
        "amount": amount,
        "price": price,
        "kind": kind,
    }
    return json.dumps(document).encode()


@pytest.fixture(scope="module")
async def streamer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    folder: Path = tmp_path_factory.mktemp("streamer-property")
    async with running("streamer", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as service:
        yield service


@pytest.fixture(scope="module")
async def topics() -> AsyncIterator[list[str]]:
    """Names of the examples' topics, deleted (with their dead-letter topics) at the end."""
    created: list[str] = []
    yield created
    admin = kafka.admin(KAFKA)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(
                [t for name in created for t in (name, dead_letter_topic(name))]
            )
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def online_reads() -> AsyncIterator[MultiplexedConnection]:
    connection = MultiplexedConnection(load(RedisSettings))
    try:
        yield connection
    finally:
        await connection.aclose()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(log=event_logs(), lateness=st.sampled_from([0, 2, 5]))
async def test_the_streamer_serves_what_the_batch_path_computes_at_the_read_time(
    streamer: ServiceProcess,
    topics: list[str],
    online_reads: MultiplexedConnection,
    log: list[Event],
    lateness: int,
) -> None:
    note(f"log (courier_id, units before the read, amount, price, kind) = {log}")
    note(f"allowed lateness: {lateness} units")
    topic = f"test.raw.prop.{uuid.uuid4().hex[:12]}"
    await _create(topic)
    topics.append(topic)
    view = courier_view(topic, lateness)
    anchor = datetime.now(UTC)
    produced = [raw_event(event, anchor) for event in log]
    async with grpc.aio.insecure_channel(streamer.address) as channel:
        client = FeatureServiceStub(channel)
        await client.ApplyFeatureView(
            pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=DEV
        )
        await _produce(topic, produced, [event[0] for event in log])
        await _consumed(f"strata.streamer.{view.name}.v1", topic, len(produced))
        reply = await client.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=[f"{view.name}:{f.name}" for f in view.resolved_features],
                entities=[
                    pb.EntityRow(keys={"courier_id": pb.Value(int64_value=c)}) for c in COURIERS
                ],
            ),
            metadata=DEV,
        )
    read_at = datetime.now(UTC)
    assume(read_at - anchor < UNIT)

    rows = [decode(view, value) for value in produced]
    served = [[(scalar(v.value), v.status, _time(v)) for v in row.values] for row in reply.rows]
    _compare(view, rows, read_at, served, f"GetOnlineFeatures in (A, A + 1 unit) for {log}")
    names = [f.name for f in view.resolved_features]
    for later in LATER:
        at = anchor + UNIT * later + UNIT / 2
        read = await read_online(online_reads, view, [(c,) for c in COURIERS], names, at)
        values = [[(v.value, _status(v.status.value), v.event_time) for v in row] for row in read]
        _compare(view, rows, at, values, f"read_online at A + {later}.5 units for {log}")


def _compare(
    view: FeatureView,
    rows: list[dict[str, Scalar]],
    at: datetime,
    online: list[list[tuple[Scalar, int, datetime | None]]],
    where: str,
) -> None:
    """Every feature of every courier online equals the batch value at ``at``."""
    spine = pa.table({"courier_id": COURIERS, "at": [at] * len(COURIERS)})
    batch = feature_values(view, pa.Table.from_pylist(rows, _schema(view)), spine)
    values = batch.values.to_pylist()
    statuses = batch.statuses.to_pylist()
    times = batch.event_times.to_pylist()
    for index, courier in enumerate(COURIERS):
        for feature, (value, status, event_time) in zip(
            view.resolved_features, online[index], strict=True
        ):
            expected = values[index][feature.name]
            at_where = f"courier {courier}, {feature.name}: {where}"
            assert status == _status(statuses[index]), f"{at_where}: status {status}"
            assert event_time == times[index], f"{at_where}: event time {event_time}"
            assert _same(value, expected), f"{at_where}: online {value!r}, batch {expected!r}"
        if statuses[index] == "present":
            _check_request_path(view, rows, courier, times[index], values[index], where)


def _check_request_path(
    view: FeatureView,
    rows: list[dict[str, Scalar]],
    courier: int,
    latest: datetime,
    values: dict[str, Scalar],
    where: str,
) -> None:
    """The request-time path, given the latest row, gives the batch's plain features."""
    distinct = [row for i, row in enumerate(rows) if row not in rows[:i]]
    last = [r for r in distinct if r["courier_id"] == courier and r["event_time"] == latest]
    supplied = request_features(view, [last[-1]])[0]
    for feature in view.resolved_features:
        if feature.function is None:
            expected = values[feature.name]
            assert _same(supplied[feature.name], expected), (
                f"courier {courier}, {feature.name} at request time: {where}"
            )


def _schema(view: FeatureView) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type.arrow) for c in view.source_columns])


def _same(left: Scalar, right: Scalar) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-9)
    return left == right and type(left) is type(right)


_STATUSES = {
    "present": pb.FEATURE_STATUS_PRESENT,
    "expired": pb.FEATURE_STATUS_EXPIRED,
    "not_found": pb.FEATURE_STATUS_NOT_FOUND,
}


def _status(name: str) -> int:
    return _STATUSES[name]


def _time(value: pb.FeatureValue) -> datetime | None:
    return value.event_time.ToDatetime(tzinfo=UTC) if value.HasField("event_time") else None


async def _create(topic: str) -> None:
    admin = kafka.admin(KAFKA)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, replication_factor=1), NewTopic(dead_letter_topic(topic), 1, 1)]
        )
    finally:
        await admin.close()


async def _produce(topic: str, values: list[bytes], couriers: list[int]) -> None:
    producer = kafka.producer(KAFKA)
    await producer.start()
    try:
        for value, courier in zip(values, couriers, strict=True):
            await producer.send_and_wait(topic, value, key=str(courier).encode())
    finally:
        await producer.stop()


async def _consumed(group: str, topic: str, count: int) -> None:
    """Until the stream's consumer group has committed ``count`` records of ``topic``.

    The stream commits after the online write and the checkpoint, so its online
    values then cover every record.
    """
    partition = TopicPartition(topic, 0)
    admin = kafka.admin(KAFKA)
    await admin.start()
    try:
        async with asyncio.timeout(BOUND):
            while True:
                committed: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(
                    group
                )
                if partition in committed and committed[partition].offset >= count:
                    return
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
