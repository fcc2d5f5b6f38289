"""Run the placement benchmark: ``python -m bench.placement [--quick] [--no-kube]``.

``--simulation-only [--seed N]`` runs the simulated week alone (no stack, no
binaries) and prints its table.

For each fleet (1,000 and 5,000 nodes): kube-scheduler binds a burst of 20,000
pending pods on a throw-away control plane of its own (the binaries of ``make
setup``), then Strata's placement round places the same burst on the same nodes
through the provisioner's store in the local stack's Postgres (a schema of its
own, dropped at the end). Then a seeded week of tasks is simulated three times:
placed on requests, on measured peaks and on measured means. Prints the tables
and, unless ``--quick``, writes them with the raw numbers to ``bench/results/``.
Needs the local stack's Postgres (``make stack-up``; ``make bench`` starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bench.bus.machine import facts, load_average
from bench.placement.kube_side import Binding, KubeSide
from bench.placement.plan import FULL, QUICK, Plan
from bench.placement.report import TUNED_QPS, Report
from bench.placement.simulation import POLICIES, Outcome, simulate
from bench.placement.strata_side import Round, StrataSide, place_alone
from bench.placement.trace import week
from strata.core.errors import StrataError
from strata.core.logging import configure_logging
from strata.core.postgres import create_pool
from strata.core.settings import PostgresSettings, TelemetrySettings, load
from strata.sdk.stack.server import StartError

DEADLINE = 1800.0
"""Seconds the whole run may take; past that it stops and cleans up."""
DEFAULT_QPS, DEFAULT_BURST = 50.0, 100
"""kube-scheduler's client rate limit when nobody raises it."""

T = TypeVar("T")


async def run(plan: Plan, folder: Path) -> Report:
    started, clock = datetime.now(UTC), time.perf_counter()
    pool = await create_pool(load(PostgresSettings))
    rounds: dict[int, list[Round]] = {}
    place_cpu: dict[int, float] = {}
    bindings: list[Binding] = []
    kube_version = "not run"
    try:
        machine = await facts(pool)
        strata = StrataSide(pool)
        await strata.create()
        try:
            async with asyncio.timeout(DEADLINE):
                for nodes in plan.node_counts:
                    if plan.kube:
                        found, kube_version = await _kube(plan, nodes, folder / f"kube-{nodes}")
                        bindings += found
                    rounds[nodes] = []
                    for number in range(1, plan.rounds + 1):
                        done = await _step(
                            f"Strata, {nodes:,} nodes, round {number}",
                            strata.round(nodes, plan.attempts),
                        )
                        rounds[nodes].append(done)
                        print(f"  {done.rate:,.0f} placements/s", file=sys.stderr)
                    place_cpu[nodes] = place_alone(nodes, plan.attempts)
        finally:
            await strata.drop()
    finally:
        await pool.close()
    simulated, runs = simulate_week(plan)
    machine["load at end"] = load_average()
    return Report(
        started=started,
        seconds=time.perf_counter() - clock,
        command=shlex.join(sys.orig_argv),
        machine=machine,
        plan=plan,
        rounds=rounds,
        place_cpu=place_cpu,
        bindings=bindings,
        kube_version=kube_version,
        simulated=simulated,
        trace_runs=runs,
    )


def simulate_week(plan: Plan) -> tuple[tuple[Outcome, ...], int]:
    """The plan's seeded week placed each way (request, peaks, means); its number of runs."""
    print("simulating ...", file=sys.stderr, flush=True)
    trace = week(plan.sim_seed, plan.sim_days)
    return tuple(simulate(trace, policy) for policy in POLICIES), len(trace.runs)


def _simulation_only(plan: Plan) -> str:
    started, clock = datetime.now(UTC), time.perf_counter()
    simulated, runs = simulate_week(plan)
    report = Report(
        started=started,
        seconds=time.perf_counter() - clock,
        command=shlex.join(sys.orig_argv),
        machine={},
        plan=plan,
        rounds={},
        place_cpu={},
        bindings=[],
        kube_version="not run",
        simulated=simulated,
        trace_runs=runs,
    )
    return "\n".join(report.simulation_table())


async def _kube(plan: Plan, nodes: int, home: Path) -> tuple[list[Binding], str]:
    """kube-scheduler on ``nodes`` fake nodes: the tuned burst, then (on the smallest fleet)
    the default client rate limit."""
    found = []
    async with KubeSide(home) as kube:
        await _step(f"kube, creating {nodes:,} nodes", kube.create_nodes(nodes))
        tuned = await _step(
            f"kube-scheduler, {nodes:,} nodes, {plan.attempts:,} pods",
            kube.bind_burst(plan.attempts, TUNED_QPS, int(TUNED_QPS)),
        )
        print(f"  {tuned.rate:,.0f} pods bound/s", file=sys.stderr)
        found.append(tuned)
        if plan.default_qps_pods and nodes == min(plan.node_counts):
            default = await _step(
                f"kube-scheduler, default rate limit, {plan.default_qps_pods:,} pods",
                kube.bind_burst(plan.default_qps_pods, DEFAULT_QPS, DEFAULT_BURST),
            )
            print(f"  {default.rate:,.0f} pods bound/s", file=sys.stderr)
            found.append(default)
        return found, kube.version


async def _step(name: str, work: Awaitable[T]) -> T:
    """Run one part, saying on stderr what runs and how long it took."""
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = await work
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes to check the code; writes nothing"
    )
    parser.add_argument(
        "--no-kube",
        action="store_true",
        help="skip kube-scheduler (no control plane binaries needed); writes nothing",
    )
    parser.add_argument(
        "--simulation-only",
        action="store_true",
        help="only the simulated week (no stack, no kube binaries); writes nothing",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the simulated week (default: the plan's, 12)"
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="folder to keep the control planes' logs in (default: a temporary one)",
    )
    args = parser.parse_args()
    settings = load(TelemetrySettings)
    if "STRATA_TELEMETRY_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging("bench-placement", settings)
    plan = QUICK if args.quick else FULL
    if args.no_kube:
        plan = dataclasses.replace(plan, kube=False)
    if args.seed is not None:
        plan = dataclasses.replace(plan, sim_seed=args.seed)
    if args.simulation_only:
        print(_simulation_only(plan))
        return
    try:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            report = asyncio.run(run(plan, args.keep_logs))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-placement-") as folder:
                report = asyncio.run(run(plan, Path(folder)))
    except TimeoutError:
        sys.exit(f"bench.placement: the run took longer than {DEADLINE:g} s")
    except (StrataError, StartError) as exc:
        sys.exit(f"bench.placement: {exc}")
    print(report.markdown())
    if not args.quick and not args.no_kube and args.seed is None:
        for path in report.write():
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
