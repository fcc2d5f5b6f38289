"""How much work each part of the bus benchmark does.

The sizes trade stability against the time budget of a 2-core machine: throughput
over 20,000 events a round, commit-to-handled over 2,000 sequential samples, 1,000
hops per variant and pace, peers in interleaved rounds so that a noisy neighbour hurts both
sides alike. A full run takes two to three minutes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; :data:`FULL` for results, :data:`QUICK` to check the code works."""

    throughput_events: int
    """Events per round through the relay, its bare peer and the batch consumer."""
    throughput_rounds: int
    per_event_events: int
    """Records per round through the per-event Bus consumer: a Postgres transaction
    (and its WAL flush) per event bounds it, so it gets fewer."""
    per_event_rounds: int
    latency_samples: int
    """Sequential commit-to-handled samples."""
    hop_samples: int
    """Sequential produce-to-handler samples per variant and pace, over ``hop_rounds``."""
    hop_rounds: int
    warmup: int
    """Samples thrown away before each latency measurement: connections open, consumer
    groups joined, caches warm."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"plan.{name} must be at least 1, got {value}")
        if self.hop_samples % self.hop_rounds:
            raise ValueError(
                f"plan.hop_samples ({self.hop_samples}) must divide into "
                f"plan.hop_rounds ({self.hop_rounds}) equal rounds"
            )


FULL = Plan(
    throughput_events=20_000,
    throughput_rounds=3,
    per_event_events=3_000,
    per_event_rounds=3,
    latency_samples=2_000,
    hop_samples=1_000,
    hop_rounds=5,
    warmup=50,
)

QUICK = Plan(
    throughput_events=2_000,
    throughput_rounds=1,
    per_event_events=300,
    per_event_rounds=1,
    latency_samples=100,
    hop_samples=100,
    hop_rounds=2,
    warmup=10,
)
