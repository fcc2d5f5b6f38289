"""Online reads of 1 entity x 3 features, one request at a time.

Two comparisons, each in alternating rounds so both sides share the machine's
moments alike:

- **in process**: ``strata.transforms.online.read_online`` (what the gateway
  calls; key, one ``HMGET`` on the multiplexed connection, statuses, decoding)
  against a bare ``HGETALL`` of the same hash on redis-py's client: what the
  library adds to (or saves from) the Redis round trip a user would write.
- **over the network**: ``GetOnlineFeatures`` over gRPC against the run's streamer
  process, against Feast's own feature server (``feast serve``, HTTP
  ``/get-online-features``) over the same Redis, each called from this process
  with a kept-alive connection on a blocking client (the generated stub on a
  blocking channel; ``http.client``), as an application calls them from a request
  thread: ``grpc.aio`` and ``aiohttp`` clients add about 0.1 ms of their own to
  every call here. Nothing else runs on the event loop while those clocks run.

The values come from one table (one row per served driver): written to Redis with
the library's ``write_online`` and, on Feast's side, materialized by Feast. Before
the clocks run, every side's answer for the served drivers is compared with that
table.
"""

from __future__ import annotations

import http.client
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import grpc
import pyarrow as pa
import redis.asyncio

from bench.bus.stats import Distribution, paired_ratio
from bench.features.data import ENTITY, FEATURES, SEED
from bench.features.streamer import METADATA
from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.transforms.definition import FeatureView
from strata.transforms.online import online_key, read_online, write_online
from strata.transforms.streaming import EntityKey, FeatureRow
from strata.transforms.types import FeatureStatus, Scalar

WARMUP = 50
"""Calls per side before each measurement: connections open, code paths warm."""

Call = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class Side:
    """One side's samples: all of them, and each round's p50 and p99 (ms)."""

    all: Distribution
    p50s: list[float]
    p99s: list[float]


@dataclass(frozen=True)
class Pair:
    ours: Side
    peer: Side
    p50_ratio: float
    """Median of per-round p50 ratios, ours / peer."""
    p99_ratio: float


@dataclass(frozen=True)
class OnlineResult:
    library_vs_hgetall: Pair
    grpc_vs_feast: Pair
    wrong: dict[str, int]
    """Per side, served drivers whose answer differs from the table's values."""
    checked: int


def expected(rows: pa.Table) -> dict[int, tuple[Scalar, ...]]:
    """Each served driver's feature values, as the online stores should return them."""
    return {row[ENTITY]: tuple(row[name] for name in FEATURES) for row in rows.to_pylist()}


async def store(client: redis.asyncio.Redis, view: FeatureView, rows: pa.Table) -> None:
    """Write the served values as the streamer writes them (``write_online``)."""
    values: dict[EntityKey, FeatureRow] = {
        (row[ENTITY],): FeatureRow(
            {name: row[name] for name in FEATURES}, row["event_time"], FeatureStatus.PRESENT
        )
        for row in rows.to_pylist()
    }
    await write_online(client, view, values)


class Reads:
    """The four ways to read one driver's three features, as ``call(driver)``."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        connection: MultiplexedConnection,
        view: FeatureView,
        streamer: str,
        feast_url: str,
    ) -> None:
        self._client, self._connection, self._view = client, connection, view
        self._channel = grpc.insecure_channel(streamer)
        self._stub = FeatureServiceStub(self._channel)
        feast = urlsplit(feast_url)
        self._feast = http.client.HTTPConnection(feast.hostname or "", feast.port, timeout=30)
        self._refs = [f"{view.name}:{name}" for name in FEATURES]

    def close(self) -> None:
        self._channel.close()
        self._feast.close()

    async def library(self, driver: int) -> tuple[Scalar, ...]:
        (row,) = await read_online(
            self._connection, self._view, [(driver,)], FEATURES, datetime.now(UTC)
        )
        return tuple(value.value for value in row)

    async def hgetall(self, driver: int) -> object:
        return await self._client.hgetall(online_key(self._view, (driver,)))

    async def grpc(self, driver: int) -> tuple[Scalar, ...]:
        request = pb.GetOnlineFeaturesRequest(
            features=self._refs,
            entities=[pb.EntityRow(keys={ENTITY: pb.Value(int64_value=driver)})],
        )
        reply = self._stub.GetOnlineFeatures(request, metadata=METADATA)  # blocking: see above
        return tuple(_scalar(value.value) for value in reply.rows[0].values)

    async def feast(self, driver: int) -> tuple[Scalar, ...]:
        body = {
            "features": [f"driver_now:{name}" for name in FEATURES],
            "entities": {ENTITY: [driver]},
        }
        headers = {"Content-Type": "application/json"}
        self._feast.request("POST", "/get-online-features", json.dumps(body), headers)
        reply = self._feast.getresponse()  # blocking: see above
        answer: dict[str, Any] = json.loads(reply.read())
        if reply.status != 200:
            raise RuntimeError(f"feast serve answered {reply.status}: {answer}")
        names = answer["metadata"]["feature_names"]
        values = {
            name: result["values"][0] for name, result in zip(names, answer["results"], strict=True)
        }
        return tuple(values[name] for name in FEATURES)


async def check(reads: Reads, table: dict[int, tuple[Scalar, ...]]) -> dict[str, int]:
    """Per side, how many served drivers get values other than the table's."""
    wrong = {"library": 0, "grpc": 0, "feast": 0}
    for driver, values in table.items():
        for side in wrong:
            answer = await getattr(reads, side)(driver)
            if tuple(answer) != values:
                wrong[side] += 1
    return wrong


async def measure(
    reads: Reads, drivers: Sequence[int], rounds: int, samples: int, network_samples: int
) -> tuple[Pair, Pair]:
    """Both comparisons: (library vs HGETALL, gRPC vs Feast's server)."""
    local = await _pair(reads.library, reads.hgetall, drivers, rounds, samples)
    remote = await _pair(reads.grpc, reads.feast, drivers, rounds, network_samples)
    return local, remote


async def _pair(ours: Call, peer: Call, drivers: Sequence[int], rounds: int, samples: int) -> Pair:
    order = random.Random(SEED)
    seconds: dict[str, list[list[float]]] = {"ours": [], "peer": []}
    for call in (ours, peer):
        for _ in range(WARMUP):
            await call(order.choice(drivers))
    for round_ in range(rounds):
        sides = [("ours", ours), ("peer", peer)]
        for name, call in sides if round_ % 2 == 0 else sides[::-1]:
            taken = []
            for _ in range(samples):
                driver = order.choice(drivers)
                started = time.perf_counter()
                await call(driver)
                taken.append(time.perf_counter() - started)
            seconds[name].append(taken)
    sides_ = {name: _side(rounds_) for name, rounds_ in seconds.items()}
    return Pair(
        ours=sides_["ours"],
        peer=sides_["peer"],
        p50_ratio=paired_ratio(sides_["ours"].p50s, sides_["peer"].p50s),
        p99_ratio=paired_ratio(sides_["ours"].p99s, sides_["peer"].p99s),
    )


def _side(rounds: list[list[float]]) -> Side:
    per_round = [Distribution.of(samples) for samples in rounds]
    return Side(
        all=Distribution.of([s for samples in rounds for s in samples]),
        p50s=[d.p50 for d in per_round],
        p99s=[d.p99 for d in per_round],
    )


def _scalar(value: pb.Value) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    scalar: Scalar = getattr(value, kind)
    return scalar
