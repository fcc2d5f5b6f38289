"""Strata's gateway and MLServer in alternating rounds, through the same client.

Each round measures one server, then the other, so both meet the machine in the
same state; ratios are medians of per-round ratios (Strata / MLServer), so each
pair shares the noise of its moment.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bench.bus.stats import Distribution, Rates, paired_ratio, rate
from bench.serving import client
from bench.serving.client import Target
from bench.serving.plan import Plan

LOAD_WARMUP = 0.5
"""Seconds of load before a throughput round's clock starts: channels open, workers busy."""


@dataclass(frozen=True)
class Latency:
    """One client, calls back to back: every sample pooled, and each round's p50 and p99."""

    overall: Distribution
    round_p50: list[float]
    round_p99: list[float]


@dataclass(frozen=True)
class SideBySide:
    strata_latency: Latency
    peer_latency: Latency
    p50_ratio: float
    p99_ratio: float
    strata_rps: Rates
    peer_rps: Rates
    rps_ratio: float
    strata_client_cpu_us: float
    """This process's CPU per answered call in the throughput rounds (median of rounds)."""
    peer_client_cpu_us: float
    clients: int


async def measure(
    strata: Target, peer: Target, rows: NDArray[np.float32], plan: Plan
) -> SideBySide:
    """Single-client latency rounds, then throughput rounds, alternating the servers."""
    samples: dict[str, list[list[float]]] = {strata.label: [], peer.label: []}
    for _ in range(plan.latency_rounds):
        for target in (strata, peer):
            took = await client.sequential(target, rows, plan.latency_samples, plan.warmup)
            samples[target.label].append(took)
    rps: dict[str, list[float]] = {strata.label: [], peer.label: []}
    cpu: dict[str, list[float]] = {strata.label: [], peer.label: []}
    for _ in range(plan.load_rounds):
        for target in (strata, peer):
            done = await client.for_seconds(
                target, rows, plan.clients, plan.load_seconds, LOAD_WARMUP
            )
            rps[target.label].append(rate(done.answered, done.seconds))
            cpu[target.label].append(done.client_cpu / done.answered * 1e6)
    ours, theirs = _latency(samples[strata.label]), _latency(samples[peer.label])
    return SideBySide(
        strata_latency=ours,
        peer_latency=theirs,
        p50_ratio=paired_ratio(ours.round_p50, theirs.round_p50),
        p99_ratio=paired_ratio(ours.round_p99, theirs.round_p99),
        strata_rps=Rates.of(rps[strata.label]),
        peer_rps=Rates.of(rps[peer.label]),
        rps_ratio=paired_ratio(rps[strata.label], rps[peer.label]),
        strata_client_cpu_us=statistics.median(cpu[strata.label]),
        peer_client_cpu_us=statistics.median(cpu[peer.label]),
        clients=plan.clients,
    )


def _latency(rounds: list[list[float]]) -> Latency:
    each = [Distribution.of(took) for took in rounds]
    return Latency(
        overall=Distribution.of([s for took in rounds for s in took]),
        round_p50=[d.p50 for d in each],
        round_p99=[d.p99 for d in each],
    )
