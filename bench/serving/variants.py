"""Gateways with different settings side by side: ``python -m bench.serving.variants``.

For measuring one change to the gateway without the peers: each variant is a
gateway started with some ``STRATA_GATEWAY_*`` (or other) variables, all serving
the same logged model from one registry. Rounds alternate between them, as in
:mod:`bench.serving.sidebyside`, so a noisy neighbour hurts all alike: one client's
p50 and p99 over sequential calls, then 8 clients' requests/s and the gateway's own CPU per
answered call (user + system time of its process, read from psutil around each
round). Before timing, every variant must answer the same rows identically.

    uv run --frozen python -m bench.serving.variants \\
        thread:STRATA_GATEWAY_INLINE_BUDGET=0 inline:

With ``--predict`` the calls are Strata ``Predict`` instead of ModelInfer: one
driver's features read from Redis (written there as :mod:`bench.serving.predict`
writes them, the view applied to a streamer of the run) and the 100-tree model over
them. To measure the code before a change, give a variant ``PYTHONPATH`` pointing
at a copy of the old sources (``old:PYTHONPATH=/tmp/old/services/gateway/src``).

prints one line per variant; nothing is written. Needs the local stack up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import psutil
from numpy.typing import NDArray

from bench.bus.machine import load_average
from bench.features import data
from bench.features.data import ENTITY
from bench.serving import client, model, ours, predict
from bench.serving.client import BOUND, Target
from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.core.logging import configure_logging
from strata.core.settings import TelemetrySettings, load

LOAD_WARMUP = 0.5
SAMPLES, WARMUP = 1_000, 100
"""One client's timed calls per round, after untimed ones."""
CLIENTS = 8
DRIVERS = 1_000


@dataclass
class Measured:
    """Each round's figures of one variant."""

    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def line(self, name: str) -> str:
        def each(values: list[float], digits: int) -> str:
            rounds = ", ".join(f"{v:.{digits}f}" for v in values)
            return f"{statistics.median(values):.{digits}f} ({rounds})"

        return (
            f"{name}: 1 client p50 ms {each(self.p50_ms, 3)}, p99 ms {each(self.p99_ms, 3)}; "
            f"8 clients rps {each(self.rps, 0)}; "
            f"gateway CPU µs per call {each(self.cpu_us, 0)}"
        )


def parse(text: str) -> tuple[str, dict[str, str]]:
    """``name:VAR=value,VAR=value`` -> (name, variables); ``name:`` has none."""
    name, _, assignments = text.partition(":")
    if not name:
        raise ValueError(f"variant {text!r}: expected name:VAR=value,... (name required)")
    variables: dict[str, str] = {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: {item!r} is not VAR=value")
        variables[key] = value
    return name, variables


def _gateway_process(address: str) -> psutil.Process:
    """The child gateway process listening on ``address``'s port."""
    port = address.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        if child.environ().get("STRATA_SERVICE_GATEWAY_PORT") == port:
            return child
    raise RuntimeError(f"no gateway process of this run serves {address}")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class Workload:
    """What every variant is asked: the same calls, one client and then eight."""

    answers: Callable[[Target], Awaitable[list[float]]]
    """The answers to a fixed sample of calls (must agree between variants)."""
    sequential: Callable[[Target], Awaitable[list[float]]]
    """Seconds of each call of one client calling back to back."""
    for_seconds: Callable[[Target, float], Awaitable[tuple[int, float]]]
    """Calls answered by 8 clients in about the seconds given, and the seconds measured."""


def model_infer(rows: NDArray[np.float32]) -> Workload:
    async def answers(target: Target) -> list[float]:
        return await client.answers(target, rows[:32])

    async def sequential(target: Target) -> list[float]:
        return await client.sequential(target, rows, SAMPLES, WARMUP)

    async def for_seconds(target: Target, seconds: float) -> tuple[int, float]:
        done = await client.for_seconds(target, rows, CLIENTS, seconds, LOAD_WARMUP)
        return done.answered, done.seconds

    return Workload(answers, sequential, for_seconds)


def predict_calls(model_name: str) -> Workload:
    """Predict for one driver at a time, drivers in a fixed random order."""
    drivers = random.Random(model.SEED).choices(range(DRIVERS), k=SAMPLES + WARMUP)

    def request(driver: int) -> gpb.PredictRequest:
        entity = {ENTITY: fpb.Value(int64_value=driver)}
        return gpb.PredictRequest(model_name=model_name, rows=[gpb.PredictRow(entity_keys=entity)])

    def value(reply: gpb.PredictResponse) -> float:
        return float(reply.predictions[0].outputs["variable"].float_list_value.values[0])

    async def answers(target: Target) -> list[float]:
        async with grpc.aio.insecure_channel(target.address) as chan:
            stub = PredictionServiceStub(chan)
            return [
                value(await stub.Predict(request(d), metadata=target.metadata, timeout=BOUND))
                for d in range(32)
            ]

    def one_by_one(target: Target) -> list[float]:
        took = []
        with grpc.insecure_channel(target.address) as chan:
            predict = PredictionServiceStub(chan).Predict
            for driver in drivers:
                started = time.perf_counter()
                predict(request(driver), metadata=target.metadata, timeout=BOUND)
                took.append(time.perf_counter() - started)
        return took[WARMUP:]

    async def sequential(target: Target) -> list[float]:
        return await asyncio.to_thread(one_by_one, target)

    async def for_seconds(target: Target, seconds: float) -> tuple[int, float]:
        stop = asyncio.Event()
        started_at: list[float] = []

        async def one_client(offset: int) -> None:
            async with grpc.aio.insecure_channel(target.address) as chan:
                predict = PredictionServiceStub(chan).Predict
                i = offset
                while not stop.is_set():
                    started = time.perf_counter()
                    call = request(drivers[i % len(drivers)])
                    await predict(call, metadata=target.metadata, timeout=BOUND)
                    started_at.append(started)
                    i += CLIENTS

        work = asyncio.gather(*(one_client(n) for n in range(CLIENTS)))
        await asyncio.sleep(LOAD_WARMUP)
        before = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        await work
        return sum(1 for s in started_at if s >= before), time.perf_counter() - before

    return Workload(answers, sequential, for_seconds)


async def run(
    variants: dict[str, dict[str, str]], rounds: int, seconds: float, predicting: bool
) -> None:
    fitted = await asyncio.to_thread(model.fit, 1_000)
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as folder:
        root = Path(folder)
        async with (
            ours.service("registry", root) as registry,
            ours.service("streamer", root) as streamer,
            AsyncExitStack() as stack,
        ):
            logged = await ours.log_versions(
                registry, fitted.first, fitted.second, fitted.rows[:64]
            )
            work, also = model_infer(fitted.rows), ""
            if predicting:
                also = await _predict_model(registry, streamer)
                work = predict_calls(also)
            targets: dict[str, Target] = {}
            for name, variables in variants.items():
                (root / name).mkdir()
                saved = {key: os.environ.get(key) for key in variables}
                os.environ.update(variables)
                try:
                    gateway = ours.gateway(root / name, registry, logged, also, streamer)
                    targets[name] = await stack.enter_async_context(gateway)
                finally:
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key)
                        else:
                            os.environ[key] = value
                await client.until_ready(targets[name])
            answers = {n: await work.answers(t) for n, t in targets.items()}
            if len({tuple(a) for a in answers.values()}) != 1:
                raise RuntimeError(f"the variants answer the same calls differently: {answers}")
            processes = {n: _gateway_process(t.address) for n, t in targets.items()}
            measured = {name: Measured() for name in targets}
            for _ in range(rounds):
                for name, target in targets.items():
                    took = await work.sequential(target)
                    measured[name].p50_ms.append(statistics.median(took) * 1e3)
                    measured[name].p99_ms.append(statistics.quantiles(took, n=100)[98] * 1e3)
                for name, target in targets.items():
                    before = _cpu(processes[name])
                    answered, took_s = await work.for_seconds(target, seconds)
                    used = _cpu(processes[name]) - before
                    # the CPU spans the warm-up too: count its calls at the round's rate
                    calls = answered * (seconds + LOAD_WARMUP) / took_s
                    measured[name].rps.append(answered / took_s)
                    measured[name].cpu_us.append(used / calls * 1e6)
    for name, figures in measured.items():
        print(figures.line(name))
    print(f"load average at end: {load_average()}")


async def _predict_model(registry: str, streamer: str) -> str:
    """The drivers' features in Redis and their view applied; the Predict model logged."""
    fitted, sample = await asyncio.to_thread(predict.fit, 1_000)
    view = predict.drivers_view()
    served = data.online_rows(DRIVERS, datetime.now(UTC), np.random.default_rng(model.SEED))
    return await predict.serve_features(registry, streamer, view, served, fitted, sample)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.variants", description=__doc__)
    parser.add_argument("variants", nargs="+", help="name:VAR=value,... (name: for defaults)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one 8-client round")
    parser.add_argument("--predict", action="store_true", help="call Predict, not ModelInfer")
    args = parser.parse_args()
    try:
        variants = dict(parse(text) for text in args.variants)
    except ValueError as exc:
        sys.exit(f"bench.serving.variants: {exc}")
    settings = load(TelemetrySettings)
    if "STRATA_TELEMETRY_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging("bench.serving.variants", settings)
    asyncio.run(run(variants, args.rounds, args.seconds, args.predict))


if __name__ == "__main__":
    main()
