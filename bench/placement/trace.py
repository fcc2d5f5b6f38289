"""A seeded trace of tasks whose real usage differs from their requests.

The seed's orchestrator knows that people misjudge what a job needs: "asks 4 GB,
needs 3 GB, or 4 GB at peak and 1-2 GB otherwise". The trace is made of task
kinds (a workflow's task, run again and again) of five shapes, in the shares of
:data:`SHAPES` (rounded to whole kinds):

- ``steady``: uses about three quarters of its request for the whole run
  (asks 4, needs 3);
- ``peaky``: a quarter to a half of its request most of the time, close to all
  of it for 5-15 % of the run (4 at peak, 1-2 otherwise);
- ``right``: asked about what it uses (85-98 %);
- ``over``: asked far more than it uses (20-40 %);
- ``under``: needs 20-50 % more memory than it asks: its first attempt is killed
  at its limit and retried with more.

Each run of a kind varies a little around the kind's figures (peak 92-104 %,
duration log-normal), and 1 % of runs peak at the whole request (the odd large
input), above what usage-aware placement reserves. Arrivals follow a day/night
cycle, quieter at weekends. Everything comes from one ``random.Random(seed)``,
so a seed is a trace.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from strata.provisioner.domain.resources import GIB, Resources

DAY = 86_400.0

SHAPES = (("steady", 0.30), ("peaky", 0.30), ("right", 0.20), ("over", 0.15), ("under", 0.05))
"""Share of task kinds of each shape."""

MEMORY_REQUESTS_GIB = (2, 4, 8, 16)
"""What kinds ask for; one CPU per 4 GiB asked (the nodes' own ratio)."""

OUTLIER_SHARE = 0.01
"""Runs that peak at their whole request, whatever their kind usually uses."""


@dataclass(frozen=True)
class TaskKind:
    """One task of one workflow: what it asks for, and what its runs use."""

    name: str
    shape: str
    request: Resources
    baseline: float
    """Memory used outside the peak, as a share of the request."""
    peak: float
    """Memory used at the peak, as a share of the request (above 1: more than it asks)."""
    peak_share: float
    """Part of the run spent at the peak."""
    cpu: float
    """CPU used, as a share of the request."""
    minutes: float
    """Median length of a run."""


@dataclass(frozen=True)
class Run:
    """One run of a kind: when it arrives, how long it takes, what it uses when."""

    index: int
    kind: TaskKind
    arrives_at: float
    seconds: float
    baseline_bytes: int
    peak_bytes: int
    peak_from: float
    """Seconds after the start when the peak begins."""
    peak_seconds: float
    cpu_millis: int


@dataclass(frozen=True)
class Trace:
    seed: int
    days: float
    kinds: tuple[TaskKind, ...]
    runs: tuple[Run, ...]


def week(seed: int, days: float = 7.0, kinds: int = 40, runs_per_minute: float = 2.0) -> Trace:
    """``days`` of runs of ``kinds`` task kinds, ``runs_per_minute`` on average."""
    if days <= 0 or kinds < 1 or runs_per_minute <= 0:
        raise ValueError(
            f"days, kinds and runs_per_minute must be positive, got {days}, {kinds}, "
            f"{runs_per_minute}"
        )
    rng = random.Random(seed)
    shapes = [shape for shape, share in SHAPES for _ in range(round(share * kinds))]
    shapes += [SHAPES[0][0]] * (kinds - len(shapes))
    rng.shuffle(shapes)
    made = tuple(_kind(rng, i, shape) for i, shape in enumerate(shapes[:kinds]))
    runs: list[Run] = []
    now, end, peak_rate = 0.0, days * DAY, runs_per_minute / 60 * 1.6
    while True:  # thinning: a Poisson process under the day's rate curve
        now += rng.expovariate(peak_rate)
        if now >= end:
            break
        if rng.random() * peak_rate > _rate(now, runs_per_minute / 60):
            continue
        runs.append(_run(rng, len(runs), rng.choice(made), now))
    return Trace(seed, days, made, tuple(runs))


def _rate(t: float, mean: float) -> float:
    """Arrivals per second at ``t``: a day/night cycle, 60 % of it on days 6 and 7."""
    day = int(t // DAY) % 7
    cycle = 1 + 0.6 * math.sin(2 * math.pi * (t % DAY) / DAY - math.pi / 2)
    return mean * cycle * (0.6 if day >= 5 else 1.0)


def _kind(rng: random.Random, index: int, shape: str) -> TaskKind:
    gib = rng.choice(MEMORY_REQUESTS_GIB)
    request = Resources(cpu_millis=gib * 250, memory_bytes=gib * GIB)
    peak_share = 0.0
    if shape == "steady":
        baseline = peak = rng.uniform(0.65, 0.80)
    elif shape == "peaky":
        baseline, peak = rng.uniform(0.25, 0.50), rng.uniform(0.85, 0.97)
        peak_share = rng.uniform(0.05, 0.15)
    elif shape == "right":
        baseline = peak = rng.uniform(0.85, 0.98)
    elif shape == "over":
        baseline = peak = rng.uniform(0.20, 0.40)
    else:
        baseline, peak = rng.uniform(0.6, 0.9), rng.uniform(1.2, 1.5)
        peak_share = rng.uniform(0.1, 0.3)
    return TaskKind(
        name=f"task-{index:02d}",
        shape=shape,
        request=request,
        baseline=baseline,
        peak=peak,
        peak_share=peak_share,
        cpu=rng.uniform(0.3, 0.9),
        minutes=rng.uniform(5, 60),
    )


def _run(rng: random.Random, index: int, kind: TaskKind, at: float) -> Run:
    seconds = kind.minutes * 60 * rng.lognormvariate(0, 0.3)
    asked = kind.request.memory_bytes
    jitter = rng.uniform(0.92, 1.04)
    peak = kind.peak * jitter
    if kind.shape != "under":
        peak = min(peak, 1.0)  # above its request it would be killed at its limit
    if rng.random() < OUTLIER_SHARE:
        peak = max(peak, 1.0)
    baseline = min(kind.baseline * jitter, peak)
    peak_seconds = seconds * kind.peak_share if kind.peak_share else seconds
    peak_from = rng.uniform(0, seconds - peak_seconds) if kind.peak_share else 0.0
    return Run(
        index=index,
        kind=kind,
        arrives_at=at,
        seconds=seconds,
        baseline_bytes=int(asked * baseline),
        peak_bytes=int(asked * peak),
        peak_from=peak_from,
        peak_seconds=peak_seconds,
        cpu_millis=int(kind.request.cpu_millis * kind.cpu * jitter),
    )
