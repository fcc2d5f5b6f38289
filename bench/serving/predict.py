"""Strata's ``Predict`` (features + model + log) beside Feast's feature server followed by
MLServer, the chain a team builds from the peers.

Both sides answer the same question, "what does the model say for driver N": one
driver's three features (``trips``, ``rating``, ``spend``) read from the same Redis,
then a 100-tree gradient-boosting model over them.

- **Strata**: one gRPC ``Predict`` call to the gateway with the driver's key; the
  gateway reads the features itself (one Redis round trip), runs the model
  in-process (ONNX Runtime) and logs the prediction to ``strata.predictions`` in
  the background.
- **The peers**: an HTTP ``/get-online-features`` call to Feast's own server
  (``feast serve``, materialized into the same Redis), then a gRPC ``ModelInfer`` to
  MLServer serving the same model with its scikit-learn runtime: two round trips,
  from one client with kept-alive connections. Nothing is logged on this side.

The values come from one table (one row per served driver), written to Redis with
Strata's ``write_online`` and materialized by Feast. Before the clocks run, both
sides' answers for a sample of drivers must agree. Latency is single-client, in
alternating rounds, on blocking clients (a thread's gRPC stubs and a kept-alive
``http.client`` connection); throughput is ``clients`` concurrent clients for a few seconds
per side, in alternating rounds, as for ModelInfer.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import numpy as np
import pyarrow as pa
import redis.asyncio
from numpy.typing import NDArray
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]

from bench.bus.stats import Distribution, Rates, paired_ratio, rate
from bench.features.data import ENTITY, FEATURES
from bench.serving import ours
from bench.serving.client import BOUND, Target
from bench.serving.model import SEED, TREES
from bench.serving.plan import Plan
from bench.serving.sidebyside import LOAD_WARMUP, Latency
from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from strata.core import redis as strata_redis
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, RedisSettings, load
from strata.transforms.definition import Column, DatasetSource, Feature, FeatureView
from strata.transforms.online import write_online
from strata.transforms.spec import view_to_spec
from strata.transforms.streaming import EntityKey, FeatureRow
from strata.transforms.types import ColumnType, FeatureStatus

FEAST_VIEW = "driver_now"
"""The Feast view holding the served rows (``bench/features/feast_worker.py``)."""
CHECKED = 32
"""Drivers whose answers must agree on both sides before anything is timed."""


def drivers_view() -> FeatureView:
    """The drivers' features as a Strata view: a dataset source, nothing streamed."""
    return FeatureView(
        name=f"bench_predict_{uuid.uuid4().hex[:10]}",
        entities=(ENTITY,),
        event_time="event_time",
        source=DatasetSource(
            "bench_predict",
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


def fit(rows: int) -> tuple[GradientBoostingRegressor, NDArray[np.float32]]:
    """A 100-tree model over the three features, and sample rows to log it with."""
    rng = np.random.default_rng(SEED)
    x = np.column_stack(
        [rng.integers(0, 500, rows), rng.uniform(1.0, 5.0, rows), rng.uniform(0.0, 250.0, rows)]
    )
    y = x[:, 0] * 0.01 + np.sin(x[:, 1]) * 3 + np.sqrt(x[:, 2]) + rng.normal(0, 0.1, rows)
    model = GradientBoostingRegressor(n_estimators=TREES, max_depth=3, random_state=0)
    return model.fit(x, y), x[:64].astype(np.float32)


async def store(client: redis.asyncio.Redis, view: FeatureView, served: pa.Table) -> None:
    """The served rows in Redis, as the streamer writes them."""
    values: dict[EntityKey, FeatureRow] = {
        (row[ENTITY],): FeatureRow(
            {name: row[name] for name in FEATURES}, row["event_time"], FeatureStatus.PRESENT
        )
        for row in served.to_pylist()
    }
    await write_online(client, view, values)


async def serve_features(
    registry: str,
    streamer: str,
    view: FeatureView,
    served: pa.Table,
    fitted: Any,
    sample: NDArray[np.float32],
) -> str:
    """The view applied to the streamer, its values in Redis, the Predict model logged
    with its bindings; returns the model's name."""
    async with channel(streamer, load(AuthSettings), mode="development") as chan:
        request = fpb.ApplyFeatureViewRequest(spec=view_to_spec(view))
        await FeatureServiceStub(chan).ApplyFeatureView(request)
    connection = strata_redis.client(load(RedisSettings))
    try:
        await store(connection, view, served)
    finally:
        await connection.aclose()
    return await ours.log_predict_model(registry, fitted, sample, view.name, FEATURES)


Call = Callable[[int], Awaitable[float]]


class Chains:
    """The two ways to get the model's answer for one driver, as ``call(driver)``."""

    def __init__(
        self,
        gateway: Target,
        predict_model: str,
        session: aiohttp.ClientSession,
        feast_url: str,
        mlserver: Target,
    ) -> None:
        self.gateway, self.model = gateway, predict_model
        self.session, self.feast_url, self.mlserver = session, feast_url, mlserver

    def predict_request(self, driver: int) -> gpb.PredictRequest:
        return gpb.PredictRequest(
            model_name=self.model,
            rows=[gpb.PredictRow(entity_keys={ENTITY: fpb.Value(int64_value=driver)})],
        )

    def feast_body(self, driver: int) -> dict[str, Any]:
        return {
            "features": [f"{FEAST_VIEW}:{name}" for name in FEATURES],
            "entities": {ENTITY: [driver]},
        }

    def mlserver_request(self, answer: dict[str, Any]) -> oip.ModelInferRequest:
        """MLServer's request for the features Feast answered with."""
        names = answer["metadata"]["feature_names"]
        found = {n: r["values"][0] for n, r in zip(names, answer["results"], strict=True)}
        return self.mlserver.request(np.asarray([found[name] for name in FEATURES], np.float32))

    async def strata(self, driver: int, stub: PredictionServiceStub) -> float:
        request = self.predict_request(driver)
        return _predicted(
            await stub.Predict(request, metadata=self.gateway.metadata, timeout=BOUND)
        )

    async def peers(self, driver: int, stub: GRPCInferenceServiceStub) -> float:
        url = f"{self.feast_url}/get-online-features"
        async with self.session.post(url, json=self.feast_body(driver)) as got:
            got.raise_for_status()
            answer: dict[str, Any] = await got.json()
        request = self.mlserver_request(answer)
        return _inferred(
            await stub.ModelInfer(request, metadata=self.mlserver.metadata, timeout=BOUND)
        )

    def sides(
        self, strata: PredictionServiceStub, peers: GRPCInferenceServiceStub
    ) -> dict[str, Call]:
        async def ours(driver: int) -> float:
            return await self.strata(driver, strata)

        async def theirs(driver: int) -> float:
            return await self.peers(driver, peers)

        return {"strata": ours, "peers": theirs}


@dataclass(frozen=True)
class PredictResult:
    strata_latency: Latency
    peer_latency: Latency
    p50_ratio: float
    """Median of per-round p50 ratios, Strata / the peers' chain."""
    p99_ratio: float
    strata_rps: Rates
    peer_rps: Rates
    rps_ratio: float
    clients: int
    agreement: float
    """Largest difference between both sides' answers on the checked drivers."""


async def measure(chains: Chains, drivers: Sequence[int], plan: Plan) -> PredictResult:
    """Agreement first, then single-client rounds, then throughput rounds, alternating."""
    order = random.Random(SEED)
    async with _Stubs(chains) as (strata_stub, peer_stub):
        calls = chains.sides(strata_stub, peer_stub)
        agreement = await _agreement(calls, drivers[:CHECKED])
    samples = await asyncio.to_thread(_one_client_rounds, chains, drivers, order, plan)
    rps: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(plan.load_rounds):
        for name in calls:
            answered, seconds = await _for_seconds(chains, name, drivers, plan)
            rps[name].append(rate(answered, seconds))
    ours, theirs = _latency(samples["strata"]), _latency(samples["peers"])
    return PredictResult(
        strata_latency=ours,
        peer_latency=theirs,
        p50_ratio=paired_ratio(ours.round_p50, theirs.round_p50),
        p99_ratio=paired_ratio(ours.round_p99, theirs.round_p99),
        strata_rps=Rates.of(rps["strata"]),
        peer_rps=Rates.of(rps["peers"]),
        rps_ratio=paired_ratio(rps["strata"], rps["peers"]),
        clients=plan.clients,
        agreement=agreement,
    )


class _Blocking:
    """One client of each side on blocking connections (a thread's): the gateway's stub,
    and Feast's server over kept-alive HTTP then MLServer's stub."""

    def __init__(self, chains: Chains) -> None:
        self._chains = chains
        self._gateway = grpc.insecure_channel(chains.gateway.address)
        self._mlserver = grpc.insecure_channel(chains.mlserver.address)
        feast = urlsplit(chains.feast_url)
        self._feast = http.client.HTTPConnection(feast.hostname or "", feast.port, timeout=BOUND)
        self._predict = PredictionServiceStub(self._gateway).Predict
        self._infer = GRPCInferenceServiceStub(self._mlserver).ModelInfer

    def strata(self, driver: int) -> float:
        chains = self._chains
        request = chains.predict_request(driver)
        return _predicted(self._predict(request, metadata=chains.gateway.metadata, timeout=BOUND))

    def peers(self, driver: int) -> float:
        chains = self._chains
        body = json.dumps(chains.feast_body(driver))
        headers = {"Content-Type": "application/json"}
        self._feast.request("POST", "/get-online-features", body, headers)
        got = self._feast.getresponse()
        answer = json.loads(got.read())
        if got.status != 200:
            raise RuntimeError(f"feast serve answered {got.status}: {answer}")
        request = chains.mlserver_request(answer)
        metadata = chains.mlserver.metadata
        return _inferred(self._infer(request, metadata=metadata, timeout=BOUND))

    def close(self) -> None:
        self._gateway.close()
        self._mlserver.close()
        self._feast.close()


def _one_client_rounds(
    chains: Chains, drivers: Sequence[int], order: random.Random, plan: Plan
) -> dict[str, list[list[float]]]:
    """Single-client rounds, alternating sides, on blocking clients: a ``grpc.aio`` or
    ``aiohttp`` client adds about 0.1 ms of its own to each call here."""
    client = _Blocking(chains)
    calls: dict[str, Callable[[int], float]] = {"strata": client.strata, "peers": client.peers}
    samples: dict[str, list[list[float]]] = {name: [] for name in calls}
    try:
        for _ in range(plan.latency_rounds):
            for name, call in calls.items():
                took = []
                for _ in range(plan.latency_samples + plan.warmup):
                    driver = order.choice(drivers)
                    started = time.perf_counter()
                    call(driver)
                    took.append(time.perf_counter() - started)
                samples[name].append(took[plan.warmup :])
    finally:
        client.close()
    return samples


def _predicted(reply: gpb.PredictResponse) -> float:
    value: float = reply.predictions[0].outputs["variable"].float_list_value.values[0]
    return value


def _inferred(reply: oip.ModelInferResponse) -> float:
    contents = reply.outputs[0].contents
    return float((contents.fp64_contents or contents.fp32_contents)[0])


class _Stubs:
    """A gRPC channel to the gateway and one to MLServer, as stubs, for one client."""

    def __init__(self, chains: Chains) -> None:
        self._gateway = grpc.aio.insecure_channel(chains.gateway.address)
        self._mlserver = grpc.aio.insecure_channel(chains.mlserver.address)

    async def __aenter__(self) -> tuple[PredictionServiceStub, GRPCInferenceServiceStub]:
        return PredictionServiceStub(self._gateway), GRPCInferenceServiceStub(self._mlserver)

    async def __aexit__(self, *_: object) -> None:
        await self._gateway.close()
        await self._mlserver.close()


async def _agreement(calls: dict[str, Call], drivers: Sequence[int]) -> float:
    worst = 0.0
    for driver in drivers:
        ours, theirs = await calls["strata"](driver), await calls["peers"](driver)
        if abs(ours - theirs) > 1e-4 + 1e-4 * abs(theirs):
            raise RuntimeError(
                f"Predict and Feast + MLServer disagree for driver {driver}: {ours!r} and "
                f"{theirs!r}; they must read the same values and serve the same model"
            )
        worst = max(worst, abs(ours - theirs))
    return worst


async def _for_seconds(
    chains: Chains, side: str, drivers: Sequence[int], plan: Plan
) -> tuple[int, float]:
    """Calls answered by ``plan.clients`` back-to-back clients (a channel each) in
    ``plan.load_seconds``, after a warm-up."""
    stop = asyncio.Event()
    started_at: list[float] = []

    async def client(offset: int) -> None:
        async with _Stubs(chains) as (strata_stub, peer_stub):
            call = chains.sides(strata_stub, peer_stub)[side]
            i = offset
            while not stop.is_set():
                started = time.perf_counter()
                await call(drivers[i % len(drivers)])
                started_at.append(started)
                i += plan.clients

    work = asyncio.gather(*(client(n) for n in range(plan.clients)))
    await asyncio.sleep(LOAD_WARMUP)
    before = time.perf_counter()
    await asyncio.sleep(plan.load_seconds)
    stop.set()
    await work
    return sum(1 for s in started_at if s >= before), time.perf_counter() - before


def _latency(rounds: list[list[float]]) -> Latency:
    each = [Distribution.of(took) for took in rounds]
    return Latency(
        overall=Distribution.of([s for took in rounds for s in took]),
        round_p50=[d.p50 for d in each],
        round_p99=[d.p99 for d in each],
    )
