"""How much work each part of the placement benchmark does.

Both sides get the same nodes (the same capacity, all Ready and empty) and the same
attempts (the same requests, in the same order), so the only difference is what
places them: kube-scheduler through its API server, or the provisioner's placement
round through Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.provisioner.domain.resources import GIB, MIB, Resources

NODE_CAPACITY = Resources(cpu_millis=32_000, memory_bytes=128 * GIB)
"""Every fake node: 32 CPU and 128 GiB (and 110 pods, kubelet's default, on the Kubernetes
side)."""

REQUESTS = (
    Resources(100, 256 * MIB),
    Resources(250, 512 * MIB),
    Resources(500, GIB),
    Resources(1_000, 2 * GIB),
)
"""What the attempts ask for, in turn: the burst fits even the smallest fleet (20,000
attempts ask for 9,250 CPU and 18.8 TiB in all: 9.25 CPU and 19 GiB a node at 1,000)."""

TASKS_PER_RUN = 100
"""Attempts of one run: the burst is 200 fan-out runs of 100 tasks, not 20,000 runs of one."""


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; :data:`FULL` for results, :data:`QUICK` to check the code works."""

    node_counts: tuple[int, ...]
    """Fleets measured, smallest first; each side places the whole burst on each."""
    attempts: int
    """Attempts (pods) waiting at once."""
    rounds: int
    """Strata rounds per fleet (each places the whole burst from scratch); the figure is
    their median. kube-scheduler binds the burst once per fleet (creating 20,000 pods
    takes longer than it takes to bind them)."""
    default_qps_pods: int
    """Pods bound by kube-scheduler with its default client rate limit (about 50 pods/s),
    on the smallest fleet; 0 skips that point."""
    kube: bool
    """Measure kube-scheduler at all (needs the binaries of ``make setup``)."""
    sim_days: float
    """Length of the simulated trace."""
    sim_seed: int

    def __post_init__(self) -> None:
        if not self.node_counts or min(self.node_counts) < 1:
            raise ValueError(f"plan.node_counts must be positive, got {self.node_counts}")
        for name in ("attempts", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"plan.{name} must be at least 1, got {getattr(self, name)}")
        if self.default_qps_pods < 0:
            raise ValueError(
                f"plan.default_qps_pods must be 0 or more, got {self.default_qps_pods}"
            )
        if self.sim_days <= 0:
            raise ValueError(f"plan.sim_days must be positive, got {self.sim_days}")


FULL = Plan(
    node_counts=(1_000, 5_000),
    attempts=20_000,
    rounds=3,
    default_qps_pods=2_000,
    kube=True,
    sim_days=7.0,
    sim_seed=12,
)

QUICK = Plan(
    node_counts=(50, 200),
    attempts=1_000,
    rounds=1,
    default_qps_pods=100,
    kube=True,
    sim_days=1.0,
    sim_seed=12,
)
