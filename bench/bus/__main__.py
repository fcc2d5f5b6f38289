"""Run the bus benchmark on the local stack: ``python -m bench.bus [--quick]``.

Prints the tables and, unless ``--quick``, writes them with the raw numbers to
``bench/results/``. Needs the local stack (``make stack-up``; ``make bench`` starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from bench.bus import dedup, flow, overhead, relay, tracing
from bench.bus.machine import facts, load_average
from bench.bus.plan import FULL, QUICK, Plan
from bench.bus.report import Report
from bench.bus.stage import stage
from strata.core.errors import StrataError
from strata.core.logging import configure_logging
from strata.core.settings import TelemetrySettings, load

DEADLINE = 290.0
"""Seconds the whole run may take; past that it stops and cleans up (it needs about 140)."""

T = TypeVar("T")


async def run(plan: Plan) -> Report:
    """Every part of the benchmark, one after another, on one throw-away stage."""
    shipping = tracing.configure()
    started, clock = datetime.now(UTC), time.perf_counter()
    async with asyncio.timeout(DEADLINE), stage() as on:
        machine = await facts(on.pool)
        relayed = await _step("outbox relay vs bare producer", relay.measure(on, plan))
        consumed = await _step("de-duplicating consumers", dedup.measure(on, plan))
        flowed = await _step("commit to handled", flow.measure(on, plan))
        hopped = await _step("one hop, four ways", overhead.measure(on, plan, shipping))
    machine["load at end"] = load_average()
    return Report(
        started=started,
        seconds=time.perf_counter() - clock,
        command=shlex.join(sys.orig_argv),
        machine=machine,
        plan=plan,
        relay=relayed,
        dedup=consumed,
        flow=flowed,
        overhead=hopped,
    )


async def _step(name: str, work: Awaitable[T]) -> T:
    """Run one part, saying on stderr what runs and how long it took."""
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = await work
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def _configure_logging() -> None:
    """Service logging, at WARNING unless the environment says otherwise: no hot path
    here logs below WARNING, and the tables stay readable."""
    settings = load(TelemetrySettings)
    if "STRATA_TELEMETRY_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging(tracing.SERVICE, settings)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bus", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes to check the code; writes nothing"
    )
    args = parser.parse_args()
    _configure_logging()
    try:
        report = asyncio.run(run(QUICK if args.quick else FULL))
    except TimeoutError as exc:  # the whole run, a round, or one event took too long
        reason = str(exc) or f"a step ran out of time (the whole run may take {DEADLINE:g} s)"
        sys.exit(f"bench.bus: {reason}; see the last step above")
    except StrataError as exc:  # e.g. the local stack is down: one line naming the server
        sys.exit(f"bench.bus: {exc}")
    print(report.markdown())
    if not args.quick:
        for path in report.write():
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
