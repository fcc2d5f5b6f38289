"""Summaries of measured samples: latency distributions, rates and ratios."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Distribution:
    """Percentiles of a set of latency samples, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Distribution:
        if len(seconds) < 2:
            raise ValueError(f"a distribution needs at least 2 samples, got {len(seconds)}")
        ms = [s * 1000 for s in seconds]
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(
            count=len(ms),
            p50=cuts[49],
            p90=cuts[89],
            p99=cuts[98],
            mean=statistics.fmean(ms),
            max=max(ms),
        )

    def brief(self) -> str:
        """``p50 / p90 / p99`` as a table cell."""
        return f"{self.p50:.2f} / {self.p90:.2f} / {self.p99:.2f}"


@dataclass(frozen=True)
class Rates:
    """Events per second of each round, and their median."""

    rounds: list[float]
    median: float

    @classmethod
    def of(cls, rounds: Sequence[float]) -> Rates:
        if not rounds:
            raise ValueError("rates need at least one round")
        return cls(list(rounds), statistics.median(rounds))


def rate(events: int, seconds: float) -> float:
    """Events per second; ``seconds`` must be positive."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return events / seconds


def paired_ratio(ours: Sequence[float], peer: Sequence[float]) -> float:
    """Median of per-round ratios ours/peer: each round's pair shares that moment's noise."""
    if len(ours) != len(peer) or not ours:
        raise ValueError(f"need as many rounds of ours ({len(ours)}) as of the peer ({len(peer)})")
    return statistics.median(o / p for o, p in zip(ours, peer, strict=True))
