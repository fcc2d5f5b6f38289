"""How much work each part of the serving benchmark does.

Sizes trade stability against the time budget of a 2-core machine: single-client
latency over 4 x 1,000 sequential calls per server, 8-client throughput over 3
rounds of 5 s per server, the two servers in alternating rounds so that a noisy
neighbour hurts both alike. A full run takes about two minutes once the peer's
virtualenv exists (the first run installs it: a minute or two more).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; :data:`FULL` for results, :data:`QUICK` to check the code works."""

    training_rows: int
    """Rows of generated data the 100-tree model is fitted on."""
    latency_samples: int
    """Sequential single-client calls per server and round."""
    latency_rounds: int
    load_seconds: float
    """Length of one 8-client throughput round per server."""
    load_rounds: int
    clients: int
    """Concurrent clients of the throughput rounds and of the swap."""
    in_process_samples: int
    """Calls of ONNX Runtime and scikit-learn in this process, for the overhead figures."""
    swap_steady_seconds: float
    """Load before the promotion, its first half second left out: the swap's baseline."""
    swap_after_seconds: float
    """Load kept on after the first answer from the new version."""
    warmup: int
    """Calls thrown away before each measurement: connections open, caches warm."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"plan.{name} must be positive, got {value}")
        if self.swap_steady_seconds <= 1.0:
            raise ValueError(
                f"plan.swap_steady_seconds must be over 1 s (half a second of it warms up), "
                f"got {self.swap_steady_seconds}"
            )


FULL = Plan(
    training_rows=5_000,
    latency_samples=1_000,
    latency_rounds=4,
    load_seconds=5.0,
    load_rounds=3,
    clients=8,
    in_process_samples=5_000,
    swap_steady_seconds=3.0,
    swap_after_seconds=3.0,
    warmup=100,
)

QUICK = Plan(
    training_rows=1_000,
    latency_samples=100,
    latency_rounds=1,
    load_seconds=1.0,
    load_rounds=1,
    clients=8,
    in_process_samples=200,
    swap_steady_seconds=1.5,
    swap_after_seconds=0.5,
    warmup=10,
)
