"""Periodic usage of a running attempt: when a sample is due, the CPU it shows, and
the memory the attempt held on average.

The agent samples a worker often (to enforce its memory limit) but reports a
sample only every ``usage_interval`` the provisioner named, with the CPU used
since the last report as an average in millicores. Every sample also goes into
the attempt's :class:`HeldMemory`, whose time-weighted mean is reported with the
attempt's end: placement can reserve it for a task that peaks only briefly.
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


@dataclass(frozen=True)
class HeldMemory:
    """Memory held over an attempt's samples: each sample's resident memory counts as
    held until the next sample (samples are not evenly spaced under load)."""

    first: Sample | None = None
    last: Sample | None = None
    byte_seconds: float = 0.0

    def add(self, sample: Sample) -> HeldMemory:
        if self.last is None:
            return HeldMemory(sample, sample, 0.0)
        span = max(sample.at - self.last.at, 0.0)
        return HeldMemory(self.first, sample, self.byte_seconds + self.last.rss_bytes * span)

    @property
    def mean_bytes(self) -> int:
        """The time-weighted mean; the only sample's memory when there is one; 0 when none."""
        if self.first is None or self.last is None:
            return 0
        span = self.last.at - self.first.at
        if span <= 0:
            return self.last.rss_bytes
        return round(self.byte_seconds / span)
