"""Run the dispatch benchmark on the local stack: ``python -m bench.dispatch [--quick]``.

Starts a scheduler, a provisioner and an agent (real processes, a database of their
own) and a local Prefect server (installed into a virtualenv of its own on first
use), runs the same no-op workflows on both in alternating rounds, prints the
tables and, unless ``--quick``, writes them with the raw numbers to
``bench/results/``. Needs the local stack (``make stack-up``; ``make bench``
starts it) with no other Strata service running on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc

from bench.bus.machine import facts, load_average
from bench.dispatch import prefect_side, workflows
from bench.dispatch.analysis import Hop, chain_hops, code_to_code, timelines
from bench.dispatch.cluster import cluster
from bench.dispatch.observer import observing
from bench.dispatch.plan import FULL, QUICK, Plan
from bench.dispatch.prefect_side import Flows
from bench.dispatch.report import Report
from bench.dispatch.strata_side import StrataSide
from strata.core.errors import StrataError
from strata.core.logging import configure_logging
from strata.core.postgres import create_pool
from strata.core.settings import KafkaSettings, PostgresSettings, TelemetrySettings, load

DEADLINE = 2400.0
"""Seconds the whole run may take; past that it stops and cleans up. It needs about 20
minutes on two cores under a load of 15-25 (the run of bench/README.md), less when quiet."""

T = TypeVar("T")


async def run(plan: Plan, folder: Path) -> Report:
    """Both sides, rounds alternating, on one cluster and one Prefect server."""
    started, clock = datetime.now(UTC), time.perf_counter()
    python = await _step(
        "installing " + prefect_side.PREFECT, asyncio.to_thread(prefect_side.install)
    )
    pool = await create_pool(load(PostgresSettings))
    try:
        machine = await facts(pool)
    finally:
        await pool.close()
    machine["prefect"] = prefect_side.version(python)
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"bench-{kind}-{suffix}" for kind in ("warmup", "chain", "fanout", "burst")}
    chain_order = [workflows.task_id(i) for i in range(plan.chain)]
    async with (
        asyncio.timeout(DEADLINE),
        cluster(folder, plan.slots) as made,
        observing(load(KafkaSettings)) as observer,
        grpc.aio.insecure_channel(made.scheduler) as channel,
        prefect_side.server(python, folder) as env,
        prefect_side.flows(python, env, folder) as peer,
    ):
        strata = StrataSide(made, channel, observer)
        await strata.apply(workflows.chain(names["warmup"], plan.warmup))
        await strata.apply(workflows.chain(names["chain"], plan.chain))
        await strata.apply(workflows.fanout(names["fanout"], plan.fanout))
        await strata.apply(workflows.fanout(names["burst"], plan.burst_width))
        await _step("warm-up, both sides", _warm(strata, names["warmup"], peer, plan))
        chain: tuple[list[float], list[float]] = ([], [])
        fanout: tuple[list[float], list[float]] = ([], [])
        hops: list[Hop] = []
        prefect_hops: list[float] = []
        for number in range(1, plan.rounds + 1):
            ours = await _step(f"round {number}: Strata chain", strata.run(names["chain"]))
            chain[0].append(ours.seconds)
            hops += chain_hops(timelines(ours.events), chain_order)
            theirs = await _step(f"round {number}: Prefect chain", peer.run("chain", plan.chain))
            chain[1].append(theirs.seconds)
            prefect_hops += code_to_code(theirs.ran_ns)
            ours = await _step(f"round {number}: Strata fan-out", strata.run(names["fanout"]))
            fanout[0].append(ours.seconds)
            theirs = await _step(
                f"round {number}: Prefect fan-out", peer.run("fanout", plan.fanout)
            )
            fanout[1].append(theirs.seconds)
        burst, burst_seconds = await _step(
            "burst of runs, Strata", strata.burst(names["burst"], plan.burst_runs)
        )
    machine["load at end"] = load_average()
    return Report(
        started=started,
        seconds=time.perf_counter() - clock,
        command=shlex.join(sys.orig_argv),
        machine=machine,
        plan=plan,
        prefect=machine["prefect"],
        chain=chain,
        fanout=fanout,
        hops=hops,
        prefect_hops=prefect_hops,
        burst=burst,
        burst_seconds=burst_seconds,
    )


async def _warm(strata: StrataSide, warmup: str, peer: Flows, plan: Plan) -> None:
    """One short chain on each side: imports, plans, connections and caches warm."""
    await strata.run(warmup)
    await peer.run("chain", plan.warmup)
    await peer.run("fanout", plan.warmup)


async def _step(name: str, work: Awaitable[T]) -> T:
    """Run one part, saying on stderr what runs and how long it took."""
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = await work
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def _configure_logging() -> None:
    """Service logging at WARNING unless the environment says otherwise."""
    settings = load(TelemetrySettings)
    if "STRATA_TELEMETRY_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging("bench-dispatch", settings)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes to check the code; writes nothing"
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="folder to keep the services' and Prefect's logs in (default: a temporary one)",
    )
    args = parser.parse_args()
    _configure_logging()
    plan = QUICK if args.quick else FULL
    try:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            report = asyncio.run(run(plan, args.keep_logs))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as folder:
                report = asyncio.run(run(plan, Path(folder)))
    except TimeoutError:
        sys.exit(f"bench.dispatch: a step ran out of time (the whole run may take {DEADLINE:g} s)")
    except StrataError as exc:  # e.g. the local stack is down: one line naming the server
        sys.exit(f"bench.dispatch: {exc}")
    print(report.markdown())
    if not args.quick:
        for path in report.write():
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
