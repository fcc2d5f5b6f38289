"""Periodic usage of a running attempt: when a sample is due, and the CPU it shows.

The agent samples a worker often (to enforce its memory limit) but reports a
sample only every ``usage_interval`` the provisioner named, with the CPU used
since the last report as an average in millicores.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One look at a worker: when (monotonic seconds), its memory, its CPU time so far."""

    at: float
    rss_bytes: int
    cpu_seconds: float


def due(last: Sample, now: Sample, interval: float) -> bool:
    """Whether ``now`` is reported, ``last`` being the last sample reported (or the
    worker's start, before the first report)."""
    return now.at - last.at >= interval


def cpu_millis(last: Sample, now: Sample) -> int:
    """CPU used between the two samples, in millicores (1000: one busy core)."""
    span = now.at - last.at
    if span <= 0:
        return 0
    return max(round((now.cpu_seconds - last.cpu_seconds) / span * 1000), 0)
