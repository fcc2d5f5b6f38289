"""The swap: version 2 promoted to champion while 8 clients call the gateway back to back.

The clients run for ``swap_steady_seconds`` (the baseline), then the alias moves in
the registry (``SetAlias``: the ``AliasChanged`` event reaches the gateway through
the outbox and Kafka; the gateway downloads, loads and warms version 2, then swaps),
and the load goes on ``swap_after_seconds`` past the first answer from version 2.

"During the swap" is every call started from the promotion until the last answer
from version 1 came back: the calls that met the download, the load and the warm-up
of the new version, and the switch itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bench.bus.stats import Distribution
from bench.serving import client, ours
from bench.serving.client import BOUND, Calls, Target
from bench.serving.plan import Plan

BASELINE_WARMUP = 0.5
"""Seconds of load left out of the baseline: channels open, the first calls warm."""
POLL = 0.005


@dataclass(frozen=True)
class Swap:
    calls: int
    """Every call of the run, answered or failed."""
    failed: int
    first_failure: str
    baseline: Distribution
    """Calls started before the promotion (after a short warm-up)."""
    during: Distribution
    """Calls started from the promotion until the last answer from version 1."""
    promote_to_new_ms: float
    """From the promotion call to the first answer from version 2."""
    old_after_new: int
    """Answers from version 1 to calls started after the first answer from version 2."""


async def measure(
    target: Target, registry: str, model: str, rows: NDArray[np.float32], plan: Plan
) -> Swap:
    stop, calls = asyncio.Event(), Calls()
    started = time.perf_counter()
    work = asyncio.create_task(client.concurrently(target, rows, plan.clients, stop, calls))
    try:
        await asyncio.sleep(plan.swap_steady_seconds)
        promoted = time.perf_counter()
        await ours.promote(registry, model, 2)
        first_new = await _first_answer_from(calls, "2")
        await asyncio.sleep(plan.swap_after_seconds)
    finally:
        stop.set()
        await work
    return summarize(calls, started=started, promoted=promoted, first_new=first_new)


def summarize(calls: Calls, *, started: float, promoted: float, first_new: float) -> Swap:
    """The swap's figures from every call of the run (times from ``time.perf_counter``):
    the load began at ``started``, the promotion call at ``promoted``, and the first
    answer from version 2 came back at ``first_new``."""
    answered = list(zip(calls.started, calls.seconds, calls.versions, strict=True))
    last_old = max((s + took for s, took, v in answered if v == "1"), default=promoted)
    return Swap(
        calls=calls.count,
        failed=len(calls.failures),
        first_failure=calls.failures[0][1] if calls.failures else "",
        baseline=Distribution.of(
            [took for s, took, _ in answered if started + BASELINE_WARMUP <= s < promoted]
        ),
        during=Distribution.of(
            [took for s, took, _ in answered if promoted <= s <= max(last_old, first_new)]
        ),
        promote_to_new_ms=(first_new - promoted) * 1000,
        old_after_new=sum(1 for s, _, v in answered if v == "1" and s > first_new),
    )


async def _first_answer_from(calls: Calls, version: str) -> float:
    """When the first answer from ``version`` came back (bounded)."""
    seen = 0
    async with asyncio.timeout(BOUND):
        while True:
            versions = calls.versions
            for i in range(seen, len(versions)):
                if versions[i] == version:
                    return calls.started[i] + calls.seconds[i]
            seen = len(versions)
            await asyncio.sleep(POLL)
