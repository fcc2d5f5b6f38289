"""Node memory pressure: which attempt to evict when the node's attempts together hold
more memory than the node offers them.

Placement may reserve less than an attempt can peak at (it reserves what the task
usually holds), so a node's reservations fit the memory it offers while its
attempts' peaks, meeting, may not. Left alone, they would take the memory kept for
the agent and the system, and then the kernel's out-of-memory killer would pick a
process by its own score, possibly the agent. Instead the agent, which samples every
attempt's resident memory, stops one attempt as soon as the attempts together hold
more than the node offers (``STRATA_AGENT_MEMORY_BYTES``, by default the machine's
memory less a margin: what attempts allocate between two samples lands in it): the
one furthest above its reservation (usage - reserved), the attempt whose overrun
placement least accounted for, as the kubelet evicts under memory pressure; between
equals, the newest (it has lost the least work). The evicted attempt is retried
without spending the task's retries: being evicted says nothing about the task.

The threshold is what placement fills, not less: attempts within their reservations
never pass it, and each share of it held back would evict attempts placement packed
as intended (in the simulated week of bench/README.md, evicting 5 % below the
offered memory retried 3.45 % of attempts instead of 0.83 %). For the same reason
only an attempt holding more than its reservation is ever evicted.

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
    started: float
    """When it arrived on the node, or its rank in arrival order: larger is newer."""
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


def eviction(offered_bytes: int, attempts: Sequence[Held]) -> Eviction | None:
    """The attempt to evict when ``attempts`` together hold more than the node offers
    them (``offered_bytes``); None while they fit, or when none holds more than its
    reservation."""
    kept = [a for a in attempts if not a.stopping]
    held = sum(a.rss_bytes for a in kept)
    over = [a for a in kept if a.over_reservation > 0]
    if held <= offered_bytes or not over:
        return None
    chosen = max(over, key=lambda a: (a.over_reservation, a.started))
    return Eviction(
        chosen.key,
        f"node memory pressure: its attempts held {held / MIB:.0f} MiB, more than the "
        f"{offered_bytes / MIB:.0f} MiB it offers; this one held {chosen.rss_bytes / MIB:.0f} MiB, "
        f"{chosen.over_reservation / MIB:.0f} MiB above its reservation of "
        f"{chosen.reserved_bytes / MIB:.0f} MiB, the most; retried without spending a retry",
    )
