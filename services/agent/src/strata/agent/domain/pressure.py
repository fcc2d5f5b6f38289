"""Node memory pressure: which attempt to evict when the node's attempts together hold
more memory than the node has.

Placement may reserve less than an attempt can peak at (it reserves what the task
usually holds), so a node's reservations fit its memory while its attempts' peaks,
meeting, may not. Left alone, the kernel's out-of-memory killer would then pick a
process by its own score, possibly the agent. Instead the agent, which samples every
attempt's resident memory, stops one attempt as soon as the attempts together hold
more than the node's memory less a margin: the one furthest above its reservation
(usage - reserved), the attempt whose overrun placement least accounted for, as the
kubelet evicts under memory pressure; between equals, the newest (it has lost the
least work). The evicted attempt is retried elsewhere without spending the task's
retries: being evicted says nothing about the task itself.

Only an attempt holding more than its reservation is ever evicted: placement fills
the node's whole memory with reservations, so attempts within theirs may together
pass the margin without any over-commit, and stopping one of them would punish a task
for nothing; they are left to run (as they were before reservations could be lower
than peaks).

An attempt already being stopped still holds its memory until its worker exits; it is
counted as freed, so one overrun evicts one attempt, not every attempt sampled before
the first is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1024**2


@dataclass(frozen=True)
class Held:
    """One attempt running on the node: what it holds now and what placement reserved."""

    key: tuple[str, str, int]
    rss_bytes: int
    reserved_bytes: int
    started: int
    """Order of arrival on the node: larger is newer."""
    stopping: bool = False
    """Already being stopped (its memory is as good as freed)."""

    @property
    def over_reservation(self) -> int:
        return self.rss_bytes - self.reserved_bytes


@dataclass(frozen=True)
class Eviction:
    """The attempt to stop, and why, for people."""

    key: tuple[str, str, int]
    message: str


def threshold(capacity_bytes: int, margin: float) -> int:
    """The most memory the node's attempts may hold together: its capacity less ``margin``
    (a share of it)."""
    return int(capacity_bytes * (1 - margin))


def eviction(capacity_bytes: int, margin: float, attempts: Sequence[Held]) -> Eviction | None:
    """The attempt to evict when ``attempts`` together hold more than the node's
    :func:`threshold`; None while they fit, or when none holds more than its reservation."""
    kept = [a for a in attempts if not a.stopping]
    held = sum(a.rss_bytes for a in kept)
    most = threshold(capacity_bytes, margin)
    over = [a for a in kept if a.over_reservation > 0]
    if held <= most or not over:
        return None
    chosen = max(over, key=lambda a: (a.over_reservation, a.started))
    return Eviction(
        chosen.key,
        f"node memory pressure: its attempts held {held / MIB:.0f} MiB, more than the "
        f"{most / MIB:.0f} MiB they may ({margin * 100:g}% of {capacity_bytes / MIB:.0f} MiB "
        f"kept free); this one held {chosen.rss_bytes / MIB:.0f} MiB, "
        f"{chosen.over_reservation / MIB:.0f} MiB above its reservation of "
        f"{chosen.reserved_bytes / MIB:.0f} MiB, the most; retried without spending a retry",
    )
