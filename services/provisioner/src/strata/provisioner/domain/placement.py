"""Placement: which waiting attempt goes on which node, and why the others wait.

Order. Within a queue, higher priority first, then first requested first (FIFO).
Across queues, weighted fair sharing: the next attempt comes from the queue
whose dominant share (the largest of its reserved CPU, memory and GPUs over the
total of the nodes given) divided by its weight is lowest, so under contention
capacity splits by weight and a flood in one queue cannot starve another: room
that frees up goes to the queue furthest below its share.

Limits. An attempt that would take its queue past its quota, or whose user
already has the queue's cap of attempts placed or running, waits without
looking for a node (``for_capacity`` False: more nodes would not help). An
attempt that fits no node waits for capacity (``for_capacity`` True: what the
autoscaler looks at). Neither blocks the attempts behind it.

Where. An attempt goes on the *fullest* node that still fits what it reserves
(bin packing: large holes stay free for large attempts), and a node that holds
its bundle warm comes first (a warm start is milliseconds).

When. A node costs until its last attempt ends, so an attempt expected to run
an hour placed beside ten-minute ones keeps their node up for the hour. An
attempt whose run time is expected (learned from its task's past attempts)
goes first on the nodes already expected to run at least as long (it adds no
node-time there), the fullest of them; failing those, on the node whose
placements end latest, so it extends a node's life the least; an empty node
comes last. Run times are compared in slots of :data:`LIFETIME_SLOT`, so
placements ending a few minutes apart count as ending together and fullness
decides between them. Attempts without an expectation are placed by fullness
alone and leave a node's expected end as it was.

Speed. One round handles tens of thousands of attempts over thousands of nodes,
so nodes are indexed, never scanned per attempt: nodes of one capacity are
grouped by their exact free room, groups kept fullest first, so "the fullest
node that fits" is the first fitting group; nodes too full for the smallest
attempt of the round leave the index; a size that found no room is remembered
for the rest of the round (room only shrinks within a round). With run times
expected, one such index per lifetime slot.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from strata.provisioner.domain.queues import DEFAULT_QUEUE, QueuePolicy
from strata.provisioner.domain.resources import Resources, cpu, gpus, memory

_Amounts = tuple[int, int, int]
"""CPU millicores, memory bytes, GPUs: the index works on plain tuples for speed."""

LIFETIME_SLOT = 300.0
"""Seconds: run times within one slot of each other count as ending together.

Of 200, 300, 450 and 600 s, 300 s saved the most node-hours over seeds 12, 1 and 2 of
the week simulation (``python -m bench.placement --simulation-only --seed N``)."""


@dataclass(frozen=True)
class Node:
    """A node taking work: what it offers, what placements reserve on it now."""

    node_id: str
    capacity: Resources
    reserved: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=dict)
    warm_bundles: frozenset[str] = frozenset()
    runs_for: float = 0.0
    """Seconds until its placements with an expected run time are expected to end (the
    latest of them); 0 when it has none, or all are past their expected end."""

    @property
    def free(self) -> Resources:
        return self.capacity - self.reserved

    def fullness_with(self, limits: Resources) -> float:
        """Mean share of the node's capacity reserved once ``limits`` are added.

        Only the kinds the node has count (a node without GPUs is not "empty" in
        GPUs), so a CPU-only node full of CPU work reads as full.
        """
        return _Shape(_amounts(self.capacity)).fullness(_amounts(self.free), _amounts(limits))


@dataclass(frozen=True)
class Attempt:
    """One requested attempt waiting in a queue; ``sequence`` is its arrival order.

    ``limits`` is the hard limit the attempt runs under; ``reserve`` is what
    placement reserves for it on the node, learned from past attempts (at most
    the limits); without it the limits are reserved.
    """

    run_id: str
    task_id: str
    attempt: int
    limits: Resources
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    bundle_sha256: str = ""
    requested_at: datetime | None = None
    sequence: int = 0
    user: str = ""
    reserve: Resources | None = None
    expected_seconds: float | None = None
    """How long it is expected to run, learned from its task's past attempts; None: no
    expectation (placed by fullness alone)."""

    @property
    def need(self) -> Resources:
        """What placement reserves on the node (and counts against the queue's quota)."""
        return self.reserve if self.reserve is not None else self.limits


@dataclass(frozen=True)
class QueueUse:
    """What a queue's placements hold before this round: reserved, and attempts per user."""

    reserved: Resources = field(default_factory=Resources)
    running_by_user: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Placed:
    attempt: Attempt
    node_id: str
    warm: bool


@dataclass(frozen=True)
class Waiting:
    """An attempt left waiting, and why.

    ``for_capacity``: True when it waits for room on a node (more nodes would
    place it); False when its queue's quota or its user's cap holds it.
    """

    attempt: Attempt
    reason: str
    for_capacity: bool = True


@dataclass(frozen=True)
class Plan:
    """The outcome of one placement round, both lists in the order they were decided."""

    placed: tuple[Placed, ...]
    waiting: tuple[Waiting, ...]


def queue_order(attempts: Iterable[Attempt]) -> list[Attempt]:
    """Higher priority first; within a priority, first requested first."""
    return sorted(attempts, key=lambda a: (-a.priority, a.sequence))


def place(
    nodes: Sequence[Node],
    attempts: Iterable[Attempt],
    queues: Mapping[str, QueuePolicy] | None = None,
    use: Mapping[str, QueueUse] | None = None,
) -> Plan:
    """Place what fits of ``attempts`` on ``nodes`` (the nodes taking work now).

    ``queues`` holds the policies of the queues that have one (others get the
    defaults: no quota, weight 1, no cap); ``use`` what each queue holds already.
    Reservations made in this round count for the attempts after it (so two
    attempts never share the same free room) and for the quotas, caps and shares.
    """
    policies = queues or {}
    held = use or {}
    by_queue: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_queue.setdefault(attempt.queue, []).append(attempt)
    if not by_queue:
        return Plan((), ())

    total = (
        sum(n.capacity.cpu_millis for n in nodes),
        sum(n.capacity.memory_bytes for n in nodes),
        sum(n.capacity.gpus for n in nodes),
    )
    lifetimes = any(a.expected_seconds is not None for w in by_queue.values() for a in w)
    index = _NodeIndex(nodes, _smallest_need(by_queue.values()), lifetimes)
    lines = [
        _QueueLine(
            position,
            policies.get(name) or QueuePolicy(name),
            queue_order(waiting),
            held.get(name) or QueueUse(),
            total,
        )
        for position, (name, waiting) in enumerate(sorted(by_queue.items()))
    ]
    turns = [line.turn() for line in lines]
    heapq.heapify(turns)

    placed: list[Placed] = []
    waiting: list[Waiting] = []
    no_room: dict[_Amounts, str] = {}
    while turns:
        line = lines[turns[0][-1]]
        attempt = line.next()
        need = _amounts(attempt.need)
        held_by = line.held_by(attempt, need)
        if held_by is not None:
            waiting.append(Waiting(attempt, held_by, for_capacity=False))
        elif need in no_room:
            waiting.append(Waiting(attempt, no_room[need]))
        else:
            chosen = index.best(need, attempt.bundle_sha256, attempt.expected_seconds)
            if chosen is None:
                no_room[need] = index.why_waiting(need)
                waiting.append(Waiting(attempt, no_room[need]))
            else:
                node_id, warm = chosen
                index.reserve(node_id, need, attempt.expected_seconds)
                line.took(attempt, need)
                placed.append(Placed(attempt, node_id, warm))
        if line.has_more():
            heapq.heapreplace(turns, line.turn())
        else:
            heapq.heappop(turns)
    return Plan(tuple(placed), tuple(waiting))


class _QueueLine:
    """One queue's waiting attempts in queue order, and what the queue holds so far."""

    __slots__ = ("_attempts", "_by_user", "_next", "_position", "_reserved", "_total", "policy")

    def __init__(
        self,
        position: int,
        policy: QueuePolicy,
        attempts: list[Attempt],
        use: QueueUse,
        total: _Amounts,
    ) -> None:
        self.policy = policy
        self._position = position
        self._attempts = attempts
        self._next = 0
        self._reserved = _amounts(use.reserved)
        self._by_user = dict(use.running_by_user)
        # Dividing by infinity makes a kind no node has count as a share of 0.
        self._total = tuple(whole if whole > 0 else math.inf for whole in total)

    def turn(self) -> tuple[float, int, int, int]:
        """Heap key: lowest weighted dominant share first; on a tie the heads' queue
        order (priority, then arrival), then a stable position."""
        head = self._attempts[self._next]
        r, t = self._reserved, self._total
        share = max(r[0] / t[0], r[1] / t[1], r[2] / t[2])
        return (share / self.policy.weight, -head.priority, head.sequence, self._position)

    def next(self) -> Attempt:
        attempt = self._attempts[self._next]
        self._next += 1
        return attempt

    def has_more(self) -> bool:
        return self._next < len(self._attempts)

    def held_by(self, attempt: Attempt, need: _Amounts) -> str | None:
        """Why the queue's own limits hold ``attempt`` back, or None when they do not."""
        policy = self.policy
        cap = policy.max_running_per_user
        if cap and self._by_user.get(attempt.user, 0) >= cap:
            who = repr(attempt.user) if attempt.user else "(no user)"
            return (
                f"user {who} has {self._by_user[attempt.user]} attempts placed or running "
                f"in queue {policy.name!r}; its per-user cap is {cap}"
            )
        quota = policy.quota
        if quota.unlimited:
            return None
        r = self._reserved
        if quota.allows(Resources(r[0] + need[0], r[1] + need[1], r[2] + need[2])):
            return None
        return (
            f"queue {policy.name!r} quota reached: quota {quota}, in use "
            f"{Resources(*r)}, needs {Resources(*need)} more"
        )

    def took(self, attempt: Attempt, need: _Amounts) -> None:
        r = self._reserved
        self._reserved = (r[0] + need[0], r[1] + need[1], r[2] + need[2])
        self._by_user[attempt.user] = self._by_user.get(attempt.user, 0) + 1


class _Shape:
    """The indexed nodes of one capacity, grouped by exact free room, fullest first.

    Within one capacity "fuller once X is added" is the same order for every X,
    so the fullest node that fits is in the first group of ``order`` whose free
    room fits; the nodes of a group differ only in their ids (smallest first:
    the tie-break).
    """

    __slots__ = ("_divisors", "_kinds", "capacity", "groups", "order", "roomiest")

    def __init__(self, capacity: _Amounts) -> None:
        self.capacity = capacity
        self._divisors = tuple(whole if whole > 0 else math.inf for whole in capacity)
        self._kinds = sum(1 for whole in capacity if whole > 0)
        self.groups: dict[_Amounts, list[str]] = {}
        self.order: list[tuple[float, _Amounts]] = []
        """(free share, free room) per group, ascending: fullest first."""
        self.roomiest: _Amounts = (0, 0, 0)
        """At least the free room of every indexed node, per kind: a need above it
        fits no node of this shape (room only shrinks within a round)."""

    def _key(self, free: _Amounts) -> tuple[float, _Amounts]:
        d = self._divisors
        return (free[0] / d[0] + free[1] / d[1] + free[2] / d[2], free)

    def fullness(self, free: _Amounts, need: _Amounts) -> float:
        """What :meth:`Node.fullness_with` says of a node of this shape with ``free`` room."""
        if not self._kinds:
            return 0.0
        c, d = self.capacity, self._divisors
        return (
            (c[0] - free[0] + need[0]) / d[0]
            + (c[1] - free[1] + need[1]) / d[1]
            + (c[2] - free[2] + need[2]) / d[2]
        ) / self._kinds

    def add(self, node_id: str, free: _Amounts) -> None:
        group = self.groups.get(free)
        if group is None:
            self.groups[free] = [node_id]
            insort(self.order, self._key(free))
            r = self.roomiest
            self.roomiest = (max(r[0], free[0]), max(r[1], free[1]), max(r[2], free[2]))
        else:
            insort(group, node_id)

    def remove(self, node_id: str, free: _Amounts) -> None:
        group = self.groups[free]
        if len(group) == 1:
            del self.groups[free]
            order = self.order
            del order[bisect_left(order, self._key(free))]
        else:
            del group[bisect_left(group, node_id)]

    def best(self, need: _Amounts) -> tuple[str, _Amounts] | None:
        """The fullest node that fits ``need`` (smallest id on a tie): its id and room."""
        c, m, g = need
        top = self.roomiest
        if c > top[0] or m > top[1] or g > top[2]:
            return None
        found: tuple[float, str, _Amounts] | None = None
        for share, free in self.order:
            if found is not None:
                if share != found[0]:
                    break
                if c <= free[0] and m <= free[1] and g <= free[2]:
                    found = min(found, (share, self.groups[free][0], free))
            elif c <= free[0] and m <= free[1] and g <= free[2]:
                found = (share, self.groups[free][0], free)
        if found is None:
            # Every group was looked at: tighten the bound so the next need this
            # large is refused without a scan.
            rooms = self.groups.keys()
            self.roomiest = (
                max((r[0] for r in rooms), default=0),
                max((r[1] for r in rooms), default=0),
                max((r[2] for r in rooms), default=0),
            )
            return None
        return found[1], found[2]


_NodeState = tuple[_Amounts, _Amounts, frozenset[str], int]
"""A node as the index tracks it: capacity, free room, warm bundles, lifetime slot."""

_Shapes = dict[_Amounts, _Shape]
"""Indexed nodes by capacity."""


class _NodeIndex:
    """The round's nodes, indexed so each attempt finds its node without a scan.

    One index over all nodes per lifetime slot (a single slot when no attempt of
    the round has an expected run time), and one per bundle (built when an
    attempt with that bundle first comes) over the nodes holding it warm.
    """

    def __init__(self, nodes: Sequence[Node], smallest: _Amounts, lifetimes: bool) -> None:
        self._smallest = smallest
        self._lifetimes = lifetimes
        self._count = len(nodes)
        self._capacities = sorted({_amounts(n.capacity) for n in nodes})
        self._nodes: dict[str, _NodeState] = {
            n.node_id: (
                _amounts(n.capacity),
                _amounts(n.free),
                n.warm_bundles,
                _slot(n.runs_for) if lifetimes else 0,
            )
            for n in nodes
        }
        self._by_slot: dict[int, _Shapes] = {}
        for node_id, (capacity, free, _warm, slot) in self._nodes.items():
            self._add(self._by_slot.setdefault(slot, {}), node_id, capacity, free)
        self._slots = sorted(self._by_slot)
        self._holding: dict[str, list[str]] = {}
        """Bundle → the nodes holding it warm (an empty bundle is warm nowhere)."""
        for n in nodes:
            for bundle in n.warm_bundles:
                if bundle:
                    self._holding.setdefault(bundle, []).append(n.node_id)
        self._warm: dict[str, _Shapes] = {}

    def _add(self, shapes: _Shapes, node_id: str, capacity: _Amounts, free: _Amounts) -> None:
        if self._useful(free):
            shape = shapes.get(capacity)
            if shape is None:
                shape = shapes[capacity] = _Shape(capacity)
            shape.add(node_id, free)

    def _useful(self, free: _Amounts) -> bool:
        """Whether the smallest attempt of the round could still fit this room."""
        s = self._smallest
        return s[0] <= free[0] and s[1] <= free[1] and s[2] <= free[2]

    def best(
        self, need: _Amounts, bundle: str, expected_seconds: float | None
    ) -> tuple[str, bool] | None:
        """The node for ``need``: a warm one if any fits, else by lifetime, then fullness."""
        if bundle in self._holding:
            warm = self._warm.get(bundle)
            if warm is None:
                warm = self._warm[bundle] = {}
                for node_id in self._holding[bundle]:
                    capacity, free, _bundles, _slot_of = self._nodes[node_id]
                    self._add(warm, node_id, capacity, free)
            chosen = _best_of(warm, need)
            if chosen is not None:
                return chosen, True
        chosen = self._by_lifetime(need, expected_seconds)
        return None if chosen is None else (chosen, False)

    def _by_lifetime(self, need: _Amounts, expected_seconds: float | None) -> str | None:
        """The fullest fitting node of the slots at or above the attempt's own; failing
        those, the first fitting node of the slots below, latest first."""
        slots = self._slots
        if len(slots) == 1:
            return _best_of(self._by_slot[slots[0]], need)
        own = 0 if expected_seconds is None else _slot(expected_seconds)
        at_least = bisect_left(slots, own)
        best: tuple[float, str] | None = None
        for slot in slots[at_least:]:
            found = _fullest(self._by_slot[slot], need)
            if found is not None and (best is None or found < best):
                best = found
        if best is not None:
            return best[1]
        for slot in reversed(slots[:at_least]):
            chosen = _best_of(self._by_slot[slot], need)
            if chosen is not None:
                return chosen
        return None

    def reserve(self, node_id: str, need: _Amounts, expected_seconds: float | None) -> None:
        """Move ``node_id`` to its room after ``need`` is reserved on it, and to the slot
        of the attempt's expected end when that is later than the node's."""
        capacity, free, warm, slot = self._nodes[node_id]
        after = (free[0] - need[0], free[1] - need[1], free[2] - need[2])
        moved = slot
        if self._lifetimes and expected_seconds is not None:
            moved = max(slot, _slot(expected_seconds))
        self._nodes[node_id] = (capacity, after, warm, moved)
        useful = self._useful(after)
        shapes = self._by_slot[slot]
        shapes[capacity].remove(node_id, free)
        if moved != slot:
            if moved not in self._by_slot:
                insort(self._slots, moved)
            shapes = self._by_slot.setdefault(moved, {})
        if useful:
            self._add(shapes, node_id, capacity, after)
        if self._warm:
            for bundle in warm:
                warm_shapes = self._warm.get(bundle)
                if warm_shapes is not None:
                    warm_shapes[capacity].remove(node_id, free)
                    if useful:
                        warm_shapes[capacity].add(node_id, after)

    def why_waiting(self, need: _Amounts) -> str:
        return _why_waiting(self._capacities, self._count, Resources(*need))


def _slot(seconds: float) -> int:
    return int(max(seconds, 0.0) // LIFETIME_SLOT)


def _best_of(shapes: Mapping[_Amounts, _Shape], need: _Amounts) -> str | None:
    """Across capacities, the node fullest once ``need`` is added (smallest id on a tie)."""
    if len(shapes) == 1:
        for shape in shapes.values():
            found = shape.best(need)
            return None if found is None else found[0]
    best = _fullest(shapes, need)
    return None if best is None else best[1]


def _fullest(shapes: Mapping[_Amounts, _Shape], need: _Amounts) -> tuple[float, str] | None:
    """The best node of ``shapes`` for ``need`` as (minus its fullness with it, its id)."""
    best: tuple[float, str] | None = None
    for shape in shapes.values():
        found = shape.best(need)
        if found is not None:
            candidate = (-shape.fullness(found[1], need), found[0])
            if best is None or candidate < best:
                best = candidate
    return best


def _amounts(resources: Resources) -> _Amounts:
    return (resources.cpu_millis, resources.memory_bytes, resources.gpus)


def _smallest_need(queues: Iterable[list[Attempt]]) -> _Amounts:
    """Per kind, the least any attempt of the round reserves: rooms below it are useless."""
    needs = [_amounts(a.need) for attempts in queues for a in attempts]
    return (min(n[0] for n in needs), min(n[1] for n in needs), min(n[2] for n in needs))


def why_waiting(nodes: Sequence[Node], limits: Resources) -> str:
    """Why ``limits`` fit on none of ``nodes``, in words a person can act on."""
    return _why_waiting(sorted({_amounts(n.capacity) for n in nodes}), len(nodes), limits)


def _why_waiting(capacities: Sequence[_Amounts], count: int, limits: Resources) -> str:
    if not count:
        return "no node is connected"
    too_large = _larger_than_every_node(capacities, limits)
    if too_large:
        return "; ".join(too_large)
    if not any(limits.fits_in(Resources(*c)) for c in capacities):
        return f"needs {limits} at once; no node has all of it"
    return f"all nodes busy: needs {limits}; none of the {count} nodes has that free now"


def _larger_than_every_node(capacities: Sequence[_Amounts], limits: Resources) -> list[str]:
    largest = Resources(
        max(c[0] for c in capacities), max(c[1] for c in capacities), max(c[2] for c in capacities)
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
