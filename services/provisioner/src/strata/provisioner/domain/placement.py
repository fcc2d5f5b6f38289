"""Placement: which waiting attempt goes on which node, and why the others wait.

The queue is ordered by priority (higher first), then by arrival (FIFO). Each
attempt in that order goes on the *fullest* node that still fits it (bin
packing: it keeps large holes free for large attempts), and among those a node
that holds the attempt's bundle warm comes first (a warm start is milliseconds).
An attempt that fits nowhere does not block the ones behind it; it waits with a
reason a person can act on: it can never fit (larger than every node), or every
node is busy now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from strata.provisioner.domain.resources import Resources, cpu, gpus, memory


@dataclass(frozen=True)
class Node:
    """A node taking work: what it offers, what placements reserve on it now."""

    node_id: str
    capacity: Resources
    reserved: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=dict)
    warm_bundles: frozenset[str] = frozenset()

    @property
    def free(self) -> Resources:
        return self.capacity - self.reserved

    def fullness_with(self, limits: Resources) -> float:
        """Mean share of the node's capacity reserved once ``limits`` are added.

        Only the kinds the node has count (a node without GPUs is not "empty" in
        GPUs), so a CPU-only node full of CPU work reads as full.
        """
        after = self.reserved + limits
        shares = [
            used / total
            for used, total in (
                (after.cpu_millis, self.capacity.cpu_millis),
                (after.memory_bytes, self.capacity.memory_bytes),
                (after.gpus, self.capacity.gpus),
            )
            if total > 0
        ]
        return sum(shares) / len(shares) if shares else 0.0


@dataclass(frozen=True)
class Attempt:
    """One requested attempt waiting in a queue; ``sequence`` is its arrival order."""

    run_id: str
    task_id: str
    attempt: int
    limits: Resources
    priority: int = 0
    queue: str = "default"
    bundle_sha256: str = ""
    requested_at: datetime | None = None
    sequence: int = 0


@dataclass(frozen=True)
class Placed:
    attempt: Attempt
    node_id: str
    warm: bool


@dataclass(frozen=True)
class Waiting:
    attempt: Attempt
    reason: str


@dataclass(frozen=True)
class Plan:
    """The outcome of one placement round, both lists in queue order."""

    placed: tuple[Placed, ...]
    waiting: tuple[Waiting, ...]


def queue_order(attempts: Iterable[Attempt]) -> list[Attempt]:
    """Higher priority first; within a priority, first requested first."""
    return sorted(attempts, key=lambda a: (-a.priority, a.sequence))


def place(nodes: Sequence[Node], attempts: Iterable[Attempt]) -> Plan:
    """Place what fits of ``attempts`` on ``nodes`` (the nodes taking work now).

    Reservations made in this round count for the attempts after it, so two
    attempts never share the same free room.
    """
    current = {n.node_id: n for n in nodes}
    placed: list[Placed] = []
    waiting: list[Waiting] = []
    for attempt in queue_order(attempts):
        fitting = [n for n in current.values() if attempt.limits.fits_in(n.free)]
        if not fitting:
            waiting.append(Waiting(attempt, why_waiting(list(current.values()), attempt.limits)))
            continue
        best = min(fitting, key=lambda n: _preference(n, attempt))
        current[best.node_id] = replace(best, reserved=best.reserved + attempt.limits)
        placed.append(Placed(attempt, best.node_id, attempt.bundle_sha256 in best.warm_bundles))
    return Plan(tuple(placed), tuple(waiting))


def _preference(node: Node, attempt: Attempt) -> tuple[bool, float, str]:
    warm = bool(attempt.bundle_sha256) and attempt.bundle_sha256 in node.warm_bundles
    return (not warm, -node.fullness_with(attempt.limits), node.node_id)


def why_waiting(nodes: Sequence[Node], limits: Resources) -> str:
    """Why ``limits`` fit on none of ``nodes``, in words a person can act on."""
    if not nodes:
        return "no node is connected"
    too_large = _larger_than_every_node(nodes, limits)
    if too_large:
        return "; ".join(too_large)
    if not any(limits.fits_in(n.capacity) for n in nodes):
        return f"needs {limits} at once; no node has all of it"
    return f"all nodes busy: needs {limits}; none of the {len(nodes)} nodes has that free now"


def _larger_than_every_node(nodes: Sequence[Node], limits: Resources) -> list[str]:
    largest = Resources(
        max(n.capacity.cpu_millis for n in nodes),
        max(n.capacity.memory_bytes for n in nodes),
        max(n.capacity.gpus for n in nodes),
    )
    reasons = []
    if limits.cpu_millis > largest.cpu_millis:
        reasons.append(
            f"needs {cpu(limits.cpu_millis)}; the largest node has {cpu(largest.cpu_millis)}"
        )
    if limits.memory_bytes > largest.memory_bytes:
        reasons.append(
            f"needs {memory(limits.memory_bytes)} memory; "
            f"the largest node has {memory(largest.memory_bytes)}"
        )
    if limits.gpus > largest.gpus:
        reasons.append(f"needs {gpus(limits.gpus)}; the largest node has {gpus(largest.gpus)}")
    return reasons
