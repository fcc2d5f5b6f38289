"""Sizing: what an attempt runs under and what placement reserves for it.

People misjudge what a task needs (asks 4 GiB, peaks at 1.5 GiB). The request
stays the hard limit an attempt runs under, but placement reserves what past
attempts of the same task really used: a high quantile of their peaks plus a
margin, never more than the limit. Too few past attempts to judge: the
request is reserved.

Memory can instead be reserved from what attempts *usually* hold: a high
quantile of each past attempt's time-weighted mean memory (``memory_from =
"mean"``, the default). A task at 4 GiB for a tenth of its run and 1.5 GiB
otherwise then reserves about 2 GiB, not 4: peaks of different attempts on one
node rarely meet. When they do, the node is over-committed and its agent evicts
the attempt furthest above its reservation, retried without spending a retry
(what the kubelet does under memory pressure); the limit still stops any one
attempt at its request. A run whose attempt was evicted has its next attempts
reserve from peaks: reserving the mean again would leave the retry the one
furthest above its reservation at its next peak, evicted time after time (the
scheduler fails a run past ``STRATA_SCHEDULER_MAX_EVICTIONS``); other runs of the
task keep reserving means, as most attempts are never evicted. Reserving peaks
(``"peak"``) never over-commits; reserving means packs tasks that peak briefly.

An attempt killed for memory is retried with more: the memory limit grows by
``oom_growth`` (up to the largest node), and the next run starts from the
raised limit once an attempt succeeded under it, so one out-of-memory does not
repeat on every run.

How long an attempt will run is learned the same way: the median run time of
the task's past attempts that ended on their own (placement keeps attempts that
end together on the same nodes, so nodes empty and stop sooner).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from strata.provisioner.domain.resources import Resources, cpu, memory


@dataclass(frozen=True)
class PastAttempt:
    """How one earlier attempt of the same task ended: its peaks and its memory limit."""

    peak_memory_bytes: int
    peak_cpu_millis: int
    limit_memory_bytes: int
    out_of_memory: bool
    mean_memory_bytes: int = 0
    """Memory held on average over the attempt's samples (time-weighted); 0: not measured."""
    evicted: bool = False
    """Stopped by its node's agent under memory pressure (its peak: what it held then)."""
    run_id: str = ""
    """The run it was an attempt of ("": not known)."""
    run_seconds: float = 0.0
    """From its placement to its end; 0: not known."""


MemoryFrom = Literal["peak", "mean"]
"""Which figure of past attempts memory reservations are taken from."""


@dataclass(frozen=True)
class SizingPolicy:
    """How much history is trusted and how much room is kept above it."""

    quantile: float = 0.95
    margin: float = 0.15
    """Reserve = quantile of the peaks * (1 + margin)."""
    min_samples: int = 3
    """Fewer successful past attempts than this: reserve the request."""
    oom_growth: float = 2.0
    """Memory limit * this after an attempt ran out of memory."""
    memory_from: MemoryFrom = "mean"
    """``mean``: reserve the quantile of past time-weighted means (over-commits; relies
    on the agents' eviction); ``peak``: of past peaks (never over-commits a node)."""

    def __post_init__(self) -> None:
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile: {self.quantile} is not in (0, 1]")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin: {self.margin} is not a share of 0 or more")
        if self.min_samples < 1:
            raise ValueError(f"min_samples: {self.min_samples} is not 1 or more")
        if not (math.isfinite(self.oom_growth) and self.oom_growth > 1):
            raise ValueError(f"oom_growth: {self.oom_growth} is not a factor above 1")
        if self.memory_from not in ("peak", "mean"):
            raise ValueError(f"memory_from: {self.memory_from!r} is not 'peak' or 'mean'")


@dataclass(frozen=True)
class Sizing:
    """The sizes of one attempt, and one line for people saying where they come from."""

    limits: Resources
    """The hard limit: the request, its memory raised after running out (≤ largest node)."""
    reserve: Resources
    """What placement reserves on the node: at most ``limits``."""
    reason: str
    expected_seconds: float | None = None
    """How long it is expected to run (the median of past run times); None: too few known."""


def size_attempt(
    request: Resources,
    history: Sequence[PastAttempt],
    largest_memory_bytes: int,
    policy: SizingPolicy = SizingPolicy(),
    run_id: str = "",
) -> Sizing:
    """Size the next attempt of a task from its ``request`` and ``history``.

    ``history``: past attempts of the same task, newest first (the last ~20).
    ``largest_memory_bytes``: the most memory any node (or node class) offers;
    a raised limit never goes past it (0 or less: unknown, no cap). A request
    above it stays as it is: placement then says no node is large enough.
    ``run_id``: the run of the attempt sized; one of its attempts evicted, it reserves peaks.
    """
    successes = [p for p in history if not p.out_of_memory]
    latest_success = next((i for i, p in enumerate(history) if not p.out_of_memory), len(history))
    # The attempts that ran out of memory after the last one that did not.
    recent_ooms = history[:latest_success]

    grown = 0
    reasons: list[str] = []
    if successes:
        grown = successes[0].limit_memory_bytes
    if recent_ooms:
        ran_out_at = max(p.limit_memory_bytes for p in recent_ooms)
        grown = max(grown, math.ceil(ran_out_at * policy.oom_growth))
    if largest_memory_bytes > 0:
        grown = min(grown, largest_memory_bytes)
    limit_memory = max(request.memory_bytes, grown)
    if recent_ooms:
        reasons.append(
            f"ran out of memory at {memory(max(p.limit_memory_bytes for p in recent_ooms))}: "
            f"limit {memory(limit_memory)}"
        )
    elif limit_memory > request.memory_bytes:
        reasons.append(f"limit {memory(limit_memory)}, raised after running out of memory")
    limits = Resources(request.cpu_millis, limit_memory, request.gpus)

    measured = [p for p in successes if p.peak_memory_bytes > 0]
    if recent_ooms:
        # The last attempt needed more than its limit: its peaks say nothing of
        # what this one will use, so the whole raised limit is reserved.
        reasons.append("reserves the limit")
        return Sizing(limits, limits, "; ".join(reasons), _expected_seconds(history, policy))
    if len(measured) < policy.min_samples:
        reasons.append(
            f"{len(measured)} measured past attempts (fewer than {policy.min_samples}): "
            "reserves the request"
        )
        return Sizing(limits, limits, "; ".join(reasons), _expected_seconds(history, policy))

    grow = 1 + policy.margin
    label = f"p{policy.quantile * 100:g}"
    means = [p.mean_memory_bytes for p in measured if p.mean_memory_bytes > 0]
    evicted = bool(run_id) and any(p.evicted and p.run_id == run_id for p in history)
    if policy.memory_from == "mean" and not evicted and len(means) >= policy.min_samples:
        held, what = _quantile(means, policy.quantile), "mean memory"
    else:
        held = _quantile([p.peak_memory_bytes for p in measured], policy.quantile)
        what = "peak memory"
    if policy.memory_from == "mean" and evicted:
        reasons.append("an attempt of this run was evicted: reserves peaks")
    peak_cpu = _quantile([p.peak_cpu_millis for p in measured], policy.quantile)
    reserve = Resources(
        min(limits.cpu_millis, math.ceil(peak_cpu * grow)),
        min(limits.memory_bytes, math.ceil(held * grow)),
        limits.gpus,
    )
    reasons.append(
        f"{label} {what} {memory(held)}, {cpu(peak_cpu)} "
        f"+ {policy.margin * 100:g}% of {len(measured)} past attempts"
    )
    return Sizing(limits, reserve, "; ".join(reasons), _expected_seconds(history, policy))


def _expected_seconds(history: Sequence[PastAttempt], policy: SizingPolicy) -> float | None:
    """The median run time of past attempts that ran to their end (neither killed for
    memory nor evicted), once at least ``min_samples`` are known."""
    ran = [
        p.run_seconds for p in history if p.run_seconds > 0 and not (p.out_of_memory or p.evicted)
    ]
    if len(ran) < policy.min_samples:
        return None
    return statistics.median(ran)


def _quantile(values: Sequence[int], q: float) -> int:
    """Nearest-rank quantile: the smallest value at least ``q`` of ``values`` are at or
    below (with few samples, p95 is the largest: it errs towards enough room)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[rank - 1]
