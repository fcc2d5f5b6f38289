"""Run the serving benchmark on the local stack: ``python -m bench.serving [--quick]``.

Prints the tables and, unless ``--quick``, writes them with the raw numbers to
``bench/results/``. Needs the local stack (``make stack-up``; ``make bench`` starts
it); installs MLServer into its own virtualenv on the first run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from bench.bus.machine import facts, load_average
from bench.serving import client, inprocess, model, ours, peer, sidebyside, swap
from bench.serving.client import Target
from bench.serving.plan import FULL, QUICK, Plan
from bench.serving.report import Report
from strata.core.errors import StrataError
from strata.core.logging import configure_logging
from strata.core.postgres import create_pool
from strata.core.settings import PostgresSettings, TelemetrySettings, load

DEADLINE = 600.0
"""Seconds the measuring may take (the peer's installation not counted); it needs about 120."""
COMPARED = 32
"""Rows whose answers must agree between the gateway and MLServer before anything is timed."""
LIBRARIES = ("onnxruntime", "scikit-learn", "grpcio")

T = TypeVar("T")


async def run(plan: Plan) -> Report:
    """Fit the model, start both servers beside each other, measure, stop them."""
    started, clock = datetime.now(UTC), time.perf_counter()
    fitted = await _step(
        "fit two 100-tree models", asyncio.to_thread(model.fit, plan.training_rows)
    )
    executable = await asyncio.to_thread(peer.install)
    machine = await _machine()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        root = Path(folder)
        async with asyncio.timeout(DEADLINE), ours.service("registry", root) as registry:
            logged = await _step(
                "log both versions",
                ours.log_versions(registry, fitted.first, fitted.second, fitted.rows[:64]),
            )
            port = ours.free_port()
            settings = peer.model_folder(
                root / "mlserver", fitted.first, port, ours.free_port(), ours.free_port()
            )
            target = peer.peer_target(port, ours.bearer())
            async with (
                ours.gateway(root, registry, logged) as strata,
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
    )


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
    except (StrataError, RuntimeError, subprocess.CalledProcessError) as exc:
        sys.exit(f"bench.serving: {exc}")
    print(report.markdown())
    if not args.quick:
        for path in report.write():
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
