"""How much work each part of the dispatch benchmark does.

Every Strata attempt runs in a worker process of its own, so each task costs an
interpreter start on two shared cores: the sizes are the issue's (a chain of 50, a
fan-out of 200) with few repetitions, and Strata and Prefect alternate rounds so a
noisy neighbour slows both alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; :data:`FULL` for results, :data:`QUICK` to check the code works."""

    chain: int
    """No-op tasks in the chain, each depending on the one before."""
    fanout: int
    """Independent no-op tasks of the fan-out workflow."""
    rounds: int
    """Timed runs of each workflow on each side; the figure is their median."""
    burst_runs: int
    """Runs triggered at once for the transition rate."""
    burst_width: int
    """Independent tasks in each burst run."""
    warmup: int
    """Tasks of the chain each side runs first, untimed: imports, plans and clients warm."""
    slots: int
    """Attempts the agent holds at once: its CPU divided by the no-op's 100 millicores."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"plan.{name} must be at least 1, got {value}")
        if self.chain < 2:
            raise ValueError(f"plan.chain must be at least 2 to have a hop, got {self.chain}")


FULL = Plan(chain=50, fanout=200, rounds=3, burst_runs=10, burst_width=20, warmup=3, slots=20)

QUICK = Plan(chain=3, fanout=4, rounds=1, burst_runs=2, burst_width=3, warmup=2, slots=4)
