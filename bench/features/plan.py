"""How much work each part of the feature store benchmark does.

The full sizes are the issue's: a training set of 100,000 labels over 1,000,000
feature rows of 10,000 drivers; online reads one driver at a time; a stream of
1,000 events/s; a backlog big enough that its consumption lasts seconds. A full
run takes about five minutes on a shared 2-core machine, most of it Feast's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; :data:`FULL` for results, :data:`QUICK` to check the code works."""

    rows: int
    """Feature rows of the training set's source."""
    labels: int
    entities: int
    training_rounds: int
    served: int
    """Drivers with online values; each online read asks for one of them."""
    online_rounds: int
    online_samples: int
    """Sequential reads per side and round, in process (library vs HGETALL)."""
    network_samples: int
    """Sequential reads per side and round, over the network (gRPC vs Feast's server)."""
    stream_events: int
    stream_rate: float
    """Events per second of the steady stream."""
    stream_warmup: int
    backlog: int
    """Events waiting on the topic before the throughput view is applied."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"plan.{name} must be at least 1, got {value}")
        if self.stream_warmup >= self.stream_events:
            raise ValueError("plan.stream_warmup must leave some of plan.stream_events to measure")


FULL = Plan(
    rows=1_000_000,
    labels=100_000,
    entities=10_000,
    training_rounds=3,
    served=1_000,
    online_rounds=5,
    online_samples=1_000,
    network_samples=400,
    stream_events=10_000,
    stream_rate=1_000.0,
    stream_warmup=1_000,
    backlog=100_000,
)

QUICK = Plan(
    rows=20_000,
    labels=2_000,
    entities=500,
    training_rounds=1,
    served=50,
    online_rounds=2,
    online_samples=100,
    network_samples=50,
    stream_events=600,
    stream_rate=1_000.0,
    stream_warmup=100,
    backlog=50_000,
)
