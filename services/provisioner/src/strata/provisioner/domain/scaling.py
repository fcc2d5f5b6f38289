"""How many nodes of which class: what the fleet starts for waiting attempts, what it drains.

Scale-up packs the attempts that wait for room (no connected node fits them) into
new nodes, first-fit decreasing: the largest attempt first, each into the first
node being started that still has room, else into a new node of the smallest class
that fits it, within the class's max and its provider's budget. Nodes already
starting count as room, so a round that runs before they connect starts no more.
An attempt no class can hold starts nothing (placement tells its owner why it waits).

Scale-down keeps each class at its min and otherwise drains a node only once it
has had no placement for ``idle_after``: a node with placements is never drained,
so no running attempt is ever stopped to save a node. A drained node (no
placements, taking none) is stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from strata.provisioner.domain.resources import Resources
from strata.provisioner.providers import NodeClassSpec


@dataclass(frozen=True)
class FleetNode:
    """A node the fleet started, as the last look saw it."""

    node_id: str
    node_class: str
    connected: bool
    """Its agent registered and is not lost; False while it is starting."""
    placements: int = 0
    draining: bool = False
    idle_since: datetime | None = None
    """Since when it has had no placement; ``None`` while it has some."""


@dataclass(frozen=True)
class ScalingPlan:
    """What one fleet round does: nodes to start (by class, one entry each), to drain,
    to stop."""

    start: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()


@dataclass
class _Bin:
    node_class: NodeClassSpec
    free: Resources
    node_id: str | None = None
    used: bool = False
    items: list[Resources] = field(default_factory=list)


def _size(need: Resources) -> tuple[int, int, int]:
    """Order of size for packing: GPUs are the scarcest, then memory, then CPU."""
    return (need.gpus, need.memory_bytes, need.cpu_millis)


def plan_scaling(
    classes: Sequence[NodeClassSpec],
    nodes: Sequence[FleetNode],
    waiting: Sequence[Resources],
    now: datetime,
    idle_after: timedelta,
    budgets: Mapping[str, Resources] | None = None,
) -> ScalingPlan:
    """The round's plan for ``classes`` given the fleet's ``nodes`` and the needs of the
    attempts ``waiting`` for room; ``budgets``: what each budgeted provider may hand out in
    all (a provider not named has no budget)."""
    by_name = {c.name: c for c in classes}
    live = [n for n in nodes if not n.draining and n.node_class in by_name]
    count = Counter(n.node_class for n in live)
    room = _budget_room(by_name, nodes, budgets or {})
    start: list[str] = []
    bins: list[_Bin] = [
        _Bin(by_name[n.node_class], by_name[n.node_class].capacity, node_id=n.node_id)
        for n in live
        if not n.connected
    ]

    def open_node(node_class: NodeClassSpec) -> _Bin | None:
        left = room.get(node_class.provider)
        if count[node_class.name] >= node_class.max_nodes:
            return None
        if left is not None and not node_class.capacity.fits_in(left):
            return None
        if left is not None:
            room[node_class.provider] = left - node_class.capacity
        count[node_class.name] += 1
        start.append(node_class.name)
        opened = _Bin(node_class, node_class.capacity)
        bins.append(opened)
        return opened

    for node_class in sorted(classes, key=lambda c: c.name):
        while count[node_class.name] < node_class.min_nodes:
            if open_node(node_class) is None:
                break
    smallest_first = sorted(classes, key=lambda c: (_size(c.capacity), c.name))
    for need in sorted(waiting, key=_size, reverse=True):
        target = next((b for b in bins if need.fits_in(b.free)), None)
        if target is None:
            target = next(
                (
                    opened
                    for c in smallest_first
                    if need.fits_in(c.capacity) and (opened := open_node(c)) is not None
                ),
                None,
            )
        if target is not None:
            target.free = target.free - need
            target.used = True
    packed = {b.node_id for b in bins if b.used and b.node_id is not None}
    return ScalingPlan(
        start=tuple(start),
        drain=_idle_beyond_min(by_name, live, packed, now, idle_after),
        stop=tuple(n.node_id for n in nodes if n.draining and n.placements == 0),
    )


def _budget_room(
    classes: Mapping[str, NodeClassSpec],
    nodes: Sequence[FleetNode],
    budgets: Mapping[str, Resources],
) -> dict[str, Resources]:
    """What each budgeted provider may still hand out, after the nodes it has now."""
    room = dict(budgets)
    for node in nodes:
        node_class = classes.get(node.node_class)
        if node_class is not None and node_class.provider in room:
            room[node_class.provider] = room[node_class.provider] - node_class.capacity
    return room


def _idle_beyond_min(
    classes: Mapping[str, NodeClassSpec],
    live: Sequence[FleetNode],
    packed: set[str],
    now: datetime,
    idle_after: timedelta,
) -> tuple[str, ...]:
    """Nodes idle for ``idle_after`` (longest idle first), as many as each class has
    above its min; never one with placements, nor a starting one waiting attempts need."""
    left = Counter(n.node_class for n in live)
    drain: list[str] = []
    idle = sorted(
        (
            n
            for n in live
            if n.placements == 0
            and n.idle_since is not None
            and now - n.idle_since >= idle_after
            and n.node_id not in packed
        ),
        key=lambda n: (n.idle_since, n.node_id),
    )
    for node in idle:
        if left[node.node_class] > classes[node.node_class].min_nodes:
            left[node.node_class] -= 1
            drain.append(node.node_id)
    return tuple(drain)
