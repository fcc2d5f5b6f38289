"""Run the serving benchmark on the local stack: ``python -m bench.serving [--quick]``.

Prints the tables and, unless ``--quick``, writes them with the raw numbers to
``bench/results/``. Needs the local stack (``make stack-up``; ``make bench`` starts
it); installs MLServer and Feast into virtualenvs of their own on the first run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from bench.bus.machine import facts, load_average
from bench.features import data
from bench.features.feast_peer import FeastError, FeastWorker, feature_server, write_repo
from bench.features.feast_peer import virtualenv as feast_virtualenv
from bench.serving import client, inprocess, model, ours, peer, predict, sidebyside, swap
from bench.serving.client import Target
from bench.serving.plan import FULL, QUICK, Plan
from bench.serving.report import Report
from strata.core.errors import StrataError
from strata.core.logging import configure_logging
from strata.core.postgres import create_pool
from strata.core.settings import (
    PostgresSettings,
    TelemetrySettings,
    load,
)

DEADLINE = 900.0
"""Seconds the measuring may take (the peers' installation not counted); about 400 here."""
COMPARED = 32
"""Rows whose answers must agree between the gateway and MLServer before anything is timed."""
LIBRARIES = ("onnxruntime", "scikit-learn", "grpcio")
DRIVERS = 1_000
"""Drivers whose features both Predict chains serve."""

T = TypeVar("T")


async def run(plan: Plan) -> Report:
    """Fit the models, start both sides beside each other, measure, stop them."""
    started, clock = datetime.now(UTC), time.perf_counter()
    fitted = await _step(
        "fit two 100-tree models", asyncio.to_thread(model.fit, plan.training_rows)
    )
    predict_model, predict_sample = await asyncio.to_thread(predict.fit, plan.training_rows)
    executable = await asyncio.to_thread(peer.install)
    venv = await asyncio.to_thread(feast_virtualenv)
    machine = await _machine()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        root = Path(folder)
        async with (
            asyncio.timeout(DEADLINE),
            ours.service("registry", root) as registry,
            ours.service("streamer", root) as streamer,
        ):
            logged = await _step(
                "log both versions",
                ours.log_versions(registry, fitted.first, fitted.second, fitted.rows[:64]),
            )
            view = predict.drivers_view()
            served = data.online_rows(DRIVERS, datetime.now(UTC), np.random.default_rng(model.SEED))
            predict_name = await _step(
                "features in Redis, the Predict model logged",
                predict.serve_features(
                    registry, streamer, view, served, predict_model, predict_sample
                ),
            )
            feast = await _step("Feast apply and materialize", _feast(venv, root, served))
            port = ours.free_port()
            settings = peer.model_folder(
                root / "mlserver", fitted.first, port, ours.free_port(), ours.free_port()
            )
            target = peer.peer_target(port, ours.bearer())
            try:
                async with (
                    ours.gateway(root, registry, logged, predict_name, streamer) as strata,
                    peer.mlserver(executable, settings, target, root / "mlserver.log") as mlserver,
                ):
                    await client.until_ready(strata)
                    agreement = await _agreement(strata, mlserver, fitted.rows[:COMPARED])
                    compared = await _step(
                        "ModelInfer side by side",
                        sidebyside.measure(strata, mlserver, fitted.rows, plan),
                    )
                    alone = inprocess.measure(
                        logged.onnx,
                        logged.input_name,
                        fitted.first,
                        fitted.rows,
                        plan.in_process_samples,
                        plan.warmup,
                    )
                    swapped = await _step(
                        "swap under load",
                        swap.measure(strata, registry, logged.name, fitted.rows, plan),
                    )
                    predicted = await _step(
                        "Predict beside Feast + MLServer",
                        _predict(executable, venv, root, strata, predict_name, predict_model, plan),
                    )
            finally:
                await asyncio.to_thread(feast.ask, "teardown")
                await asyncio.to_thread(feast.close)
    machine["load at end"] = load_average()
    return Report(
        started=started,
        seconds=time.perf_counter() - clock,
        command=shlex.join(sys.orig_argv),
        machine=machine,
        plan=plan,
        compared=COMPARED,
        agreement=agreement,
        side_by_side=compared,
        in_process=alone,
        swap=swapped,
        predict=predicted,
    )


async def _feast(venv: Path, root: Path, served: pa.Table) -> FeastWorker:
    """Feast's repository with the served rows, materialized into Redis."""
    rows = root / "online.parquet"
    pq.write_table(served, rows)
    feast = FeastWorker(
        venv,
        write_repo(root / "feast", f"strata_bench_serving_{uuid.uuid4().hex[:8]}"),
        root / "feast-worker.log",
    )
    now = datetime.now(UTC)
    await asyncio.to_thread(feast.ask, "apply", rows=str(rows), online_rows=str(rows))
    await asyncio.to_thread(
        feast.ask,
        "materialize",
        start=(now - timedelta(days=1)).isoformat(),
        end=(now + timedelta(minutes=1)).isoformat(),
    )
    return feast


async def _predict(
    executable: Path,
    venv: Path,
    root: Path,
    strata: Target,
    name: str,
    fitted: Any,
    plan: Plan,
) -> predict.PredictResult:
    """Feast's server and a second MLServer (the Predict model) beside the gateway."""
    port = ours.free_port()
    settings = peer.model_folder(
        root / "mlserver-predict", fitted, port, ours.free_port(), ours.free_port()
    )
    target = peer.peer_target(port, ours.bearer())
    async with (
        peer.mlserver(executable, settings, target, root / "mlserver-predict.log") as mlserver,
        feature_server(venv, root / "feast", ours.free_port(), root / "feast-serve.log") as url,
        aiohttp.ClientSession() as session,
    ):
        await client.until_ready(dataclasses.replace(strata, model=name))
        chains = predict.Chains(strata, name, session, url, mlserver)
        return await predict.measure(chains, list(range(DRIVERS)), plan)


async def _agreement(strata: Target, mlserver: Target, rows: NDArray[np.float32]) -> float:
    """The largest difference between both servers' answers; stops the run past float32's."""
    ours_, theirs = await client.answers(strata, rows), await client.answers(mlserver, rows)
    for i, (a, b) in enumerate(zip(ours_, theirs, strict=True)):
        if abs(a - b) > 1e-4 + 1e-4 * abs(b):
            raise RuntimeError(
                f"the servers disagree on row {i}: gateway {a!r}, MLServer {b!r}; "
                "they must serve the same model"
            )
    return max(abs(a - b) for a, b in zip(ours_, theirs, strict=True))


async def _machine() -> dict[str, str]:
    pool = await create_pool(load(PostgresSettings))
    try:
        found = await facts(pool)
    finally:
        await pool.close()
    found.update({name: version(name) for name in LIBRARIES})
    found["peer"] = f"MLServer {peer.MLSERVER} + mlserver-sklearn (pip, {peer.cache_folder()})"
    return found


async def _step(name: str, work: Awaitable[T]) -> T:
    """Run one part, saying on stderr what runs and how long it took."""
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = await work
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def _configure_logging() -> None:
    """Service logging at WARNING unless the environment says otherwise: the tables
    stay readable."""
    settings = load(TelemetrySettings)
    if "STRATA_TELEMETRY_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging("bench.serving", settings)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes to check the code; writes nothing"
    )
    args = parser.parse_args()
    _configure_logging()
    try:
        report = asyncio.run(run(QUICK if args.quick else FULL))
    except TimeoutError as exc:
        reason = str(exc) or f"a step ran out of time (the measuring may take {DEADLINE:g} s)"
        sys.exit(f"bench.serving: {reason}; see the last step above")
    except (StrataError, RuntimeError, FeastError, subprocess.CalledProcessError) as exc:
        sys.exit(f"bench.serving: {exc}")
    print(report.markdown())
    if not args.quick:
        for path in report.write():
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
