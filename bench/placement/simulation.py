"""A trace of tasks placed three ways: on their requests, or on their measured usage.

Pure: no clock, no I/O, one seeded trace (:mod:`bench.placement.trace`) in, one
:class:`Outcome` out; the same trace gives the same figures. Both ways use the
provisioner's own code: :func:`~strata.provisioner.domain.sizing.size_attempt`
sizes every attempt from the past attempts of its task (newest first, at most
20), and :func:`~strata.provisioner.domain.placement.place` puts the waiting
attempts on the nodes. They differ in what placement reserves:

- ``request``: the attempt's limits (its request, raised after it ran out of
  memory), as kube-scheduler reserves a pod's requests;
- ``peak``: the sizing's ``reserve`` with memory from past peaks (a high
  quantile of them plus a margin, never above the limits),
  ``SizingPolicy(memory_from="peak")``;
- ``mean``: the sizing's ``reserve`` with memory from past attempts'
  time-weighted mean memory: the provisioner's default,
  ``SizingPolicy(memory_from="mean")`` (the agent reports it with each attempt's
  end, averaged over its samples).

The usage-aware ways also place by how long attempts are expected to run (the
median run time of the task's past attempts, as the provisioner learns it), so
that attempts ending together share nodes and nodes empty sooner; ``request`` does
not (kube-scheduler knows nothing of run times).

The node's memory is over-committed when its attempts together use more than it
offers them (a reservation is not a limit): then the agent's own rule
(:func:`~strata.agent.domain.pressure.eviction`) evicts the attempt furthest above
its reservation, which
is queued again (what the kubelet does to the pod furthest above its request under
memory pressure), and its usage when evicted joins its task's history (the run's next
attempts then reserve from peaks, as the provisioner's sizing says). An
attempt using more than its own limit is killed for out of memory, retried with a
larger limit. Both count as retried for memory.

Nodes come and go by the provisioner's own scaling decisions
(:func:`~strata.provisioner.domain.scaling.plan_scaling`, one node class of
:class:`Fleet`'s size): every ``tick`` it packs the attempts waiting for room,
largest first, into the free room of nodes still starting and then into new
nodes, which are started (ready after ``boot``); a node without attempts for
``idle_after`` is drained (it takes no more) and stopped at the next tick, down
to ``min_nodes``. A node counts from the moment it is asked for until it is
stopped.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from bench.placement.trace import Run, Trace
from strata.agent.domain.pressure import Held, eviction
from strata.provisioner.domain.placement import Attempt, Node, place
from strata.provisioner.domain.resources import GIB, Resources
from strata.provisioner.domain.scaling import FleetNode, plan_scaling
from strata.provisioner.domain.sizing import PastAttempt, SizingPolicy, size_attempt
from strata.provisioner.providers import NodeClassSpec

Policy = Literal["request", "peak", "mean"]
POLICIES: tuple[Policy, ...] = ("request", "peak", "mean")
SIZING: dict[Policy, SizingPolicy] = {
    "request": SizingPolicy(),
    "peak": SizingPolicy(memory_from="peak"),
    "mean": SizingPolicy(memory_from="mean"),
}
"""The provisioner's sizing each way uses (``request`` only takes its limits)."""
HISTORY = 20
"""Past attempts of a task handed to the sizing, newest first (as the provisioner loads)."""
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
"""Simulated second 0, for the scaling's clock."""


@dataclass(frozen=True)
class Fleet:
    """The node class and the scaler's settings."""

    capacity: Resources = field(
        default_factory=lambda: Resources(cpu_millis=16_000, memory_bytes=64 * GIB)
    )
    boot: float = 120.0
    """Seconds from asking for a node to its taking work."""
    idle_after: float = 300.0
    tick: float = 30.0
    min_nodes: int = 1
    max_nodes: int = 500

    @property
    def node_class(self) -> NodeClassSpec:
        return NodeClassSpec("sim", "sim", self.capacity, self.min_nodes, self.max_nodes)


@dataclass(frozen=True)
class Outcome:
    """What one way of placing cost over the trace."""

    policy: Policy
    runs: int
    finished: int
    attempts: int
    """Attempts started (first attempts and retries)."""
    evicted: int
    """Killed because their node's memory ran out, furthest above their reservation."""
    out_of_memory: int
    """Killed at their own memory limit."""
    node_seconds: float
    used_memory_seconds: float
    """Bytes used x seconds, summed over every attempt."""
    reserved_memory_seconds: float
    used_cpu_seconds: float
    """Millicores used x seconds."""
    peak_nodes: int
    mean_wait: float
    """Seconds from a run's arrival to the start of its attempt that finished."""
    capacity: Resources

    @property
    def node_hours(self) -> float:
        return self.node_seconds / 3600

    @property
    def memory_utilisation(self) -> float:
        """Memory used over the memory of the nodes, over the whole trace."""
        return self.used_memory_seconds / (self.node_seconds * self.capacity.memory_bytes)

    @property
    def cpu_utilisation(self) -> float:
        return self.used_cpu_seconds / (self.node_seconds * self.capacity.cpu_millis)

    @property
    def reserved_share(self) -> float:
        """Memory reserved over the memory of the nodes."""
        return self.reserved_memory_seconds / (self.node_seconds * self.capacity.memory_bytes)

    @property
    def retried_share(self) -> float:
        """Attempts killed for memory (and so retried) over attempts started."""
        return (self.evicted + self.out_of_memory) / self.attempts


@dataclass
class _Running:
    run: Run
    attempt: Attempt
    node_id: str
    started: float
    using: int
    cpu: int
    memory_seconds: float = 0.0
    """Bytes held x seconds so far: the agent's time-weighted mean, times the run time."""

    def mean_memory(self, now: float) -> int:
        span = now - self.started
        return round(self.memory_seconds / span) if span > 0 else self.using


@dataclass
class _Node:
    node_id: str
    asked_at: float
    ready: bool = False
    idle_since: float = 0.0
    draining: bool = False
    running: dict[str, _Running] = field(default_factory=dict)

    def reserved(self) -> Resources:
        total = Resources()
        for running in self.running.values():
            total += running.attempt.need
        return total

    def using(self) -> int:
        return sum(r.using for r in self.running.values())

    def runs_for(self, now: float) -> float:
        """Seconds until its attempts are expected to end, as the provisioner reckons it."""
        ends = [
            r.started + r.attempt.expected_seconds
            for r in self.running.values()
            if r.attempt.expected_seconds is not None
        ]
        return max(0.0, max(ends, default=now) - now)


def simulate(trace: Trace, policy: Policy, fleet: Fleet = Fleet()) -> Outcome:
    """Place every run of ``trace`` the ``policy`` way; what it cost."""
    return _Simulation(trace, policy, fleet).run()


class _Simulation:
    """One pass over a trace: an event queue in simulated seconds."""

    def __init__(self, trace: Trace, policy: Policy, fleet: Fleet) -> None:
        self.trace, self.policy, self.fleet = trace, policy, fleet
        self.sizing = SIZING[policy]
        self.events: list[tuple[float, int, str, str]] = []
        self.order = itertools.count()
        self.nodes: dict[str, _Node] = {}
        self.node_names = (f"n{i:05d}" for i in itertools.count())
        self.waiting: dict[str, tuple[Run, Attempt]] = {}
        self.running: dict[str, _Running] = {}
        self.history: dict[str, deque[PastAttempt]] = {}
        self.for_capacity: list[Attempt] = []
        self.now = 0.0
        self.stats = dict.fromkeys(
            ("attempts", "evicted", "oom", "finished", "node_s", "mem_s", "res_s", "cpu_s"), 0.0
        )
        self.waits: list[float] = []
        self.peak_nodes = 0
        self.changed = True

    def run(self) -> Outcome:
        runs = {str(r.index): r for r in self.trace.runs}
        for r in self.trace.runs:
            self._at(r.arrives_at, "arrive", str(r.index))
        end = max((r.arrives_at for r in self.trace.runs), default=0.0)
        for _ in range(self.fleet.min_nodes):
            self._ask_node(ready=True)
        self._at(self.fleet.tick, "tick", "")
        while self.events:
            at = self.events[0][0]
            self._advance(at)
            while self.events and self.events[0][0] == at:
                _, _, what, key = heapq.heappop(self.events)
                if what == "arrive":
                    self._queue(runs[key], 1)
                elif what == "tick":
                    self._scale()
                    if self.running or self.waiting or at < end:
                        self._at(at + self.fleet.tick, "tick", "")
                elif what == "ready":
                    self.nodes[key].ready, self.nodes[key].idle_since = True, at
                    self.changed = True
                else:
                    self._usage_event(what, key)
            if self.changed and self.waiting:
                self._place()
        s = self.stats
        return Outcome(
            policy=self.policy,
            runs=len(self.trace.runs),
            finished=int(s["finished"]),
            attempts=int(s["attempts"]),
            evicted=int(s["evicted"]),
            out_of_memory=int(s["oom"]),
            node_seconds=s["node_s"],
            used_memory_seconds=s["mem_s"],
            reserved_memory_seconds=s["res_s"],
            used_cpu_seconds=s["cpu_s"],
            peak_nodes=self.peak_nodes,
            mean_wait=sum(self.waits) / len(self.waits) if self.waits else 0.0,
            capacity=self.fleet.capacity,
        )

    def _at(self, when: float, what: str, key: str) -> None:
        heapq.heappush(self.events, (when, next(self.order), what, key))

    def _advance(self, to: float) -> None:
        """Integrate what nodes, usage and reservations held from ``now`` to ``to``."""
        span = to - self.now
        if span > 0:
            s = self.stats
            s["node_s"] += span * len(self.nodes)
            for r in self.running.values():
                r.memory_seconds += span * r.using
                s["mem_s"] += span * r.using
                s["cpu_s"] += span * r.cpu
                s["res_s"] += span * r.attempt.need.memory_bytes
        self.now = to

    # attempts

    def _queue(self, run: Run, number: int) -> None:
        key = f"{run.index}/{number}"
        history = list(self.history.get(run.kind.name, ()))
        sizing = size_attempt(
            run.kind.request,
            history,
            self.fleet.capacity.memory_bytes,
            self.sizing,
            run_id=str(run.index),
        )
        reserve = sizing.limits if self.policy == "request" else sizing.reserve
        attempt = Attempt(
            run_id=str(run.index),
            task_id=run.kind.name,
            attempt=number,
            limits=sizing.limits,
            reserve=reserve,
            sequence=run.index,
            expected_seconds=None if self.policy == "request" else sizing.expected_seconds,
        )
        self.waiting[key] = (run, attempt)
        self.changed = True

    def _place(self) -> None:
        nodes = [
            Node(n.node_id, self.fleet.capacity, n.reserved(), runs_for=n.runs_for(self.now))
            for n in self.nodes.values()
            if n.ready and not n.draining
        ]
        plan = place(nodes, [attempt for _, attempt in self.waiting.values()])
        for placed in plan.placed:
            key = f"{placed.attempt.run_id}/{placed.attempt.attempt}"
            run, attempt = self.waiting.pop(key)
            self._start(run, attempt, placed.node_id, key)
        self.for_capacity = [w.attempt for w in plan.waiting if w.for_capacity]
        self.changed = False

    def _start(self, run: Run, attempt: Attempt, node_id: str, key: str) -> None:
        at_peak = run.peak_from == 0.0
        running = _Running(
            run,
            attempt,
            node_id,
            self.now,
            run.peak_bytes if at_peak else run.baseline_bytes,
            run.cpu_millis,
        )
        self.running[key] = running
        self.nodes[node_id].running[key] = running
        self.stats["attempts"] += 1
        if not at_peak:
            self._at(self.now + run.peak_from, "rise", key)
        peak_ends = run.peak_from + run.peak_seconds
        if peak_ends < run.seconds:
            self._at(self.now + peak_ends, "fall", key)
        self._at(self.now + run.seconds, "end", key)
        self._check(running)

    def _usage_event(self, what: str, key: str) -> None:
        running = self.running.get(key)
        if running is None:
            return  # killed before: its later events are void
        if what == "rise":
            running.using = running.run.peak_bytes
            self._check(running)
        elif what == "fall":
            running.using = running.run.baseline_bytes
        else:
            self._remember(running, running.run.peak_bytes, out_of_memory=False)
            self._stop(key)
            self.stats["finished"] += 1
            self.waits.append(running.started - running.run.arrives_at)

    def _check(self, rising: _Running) -> None:
        """Kill for memory: the rising attempt over its own limit; then, while the node
        uses more than it has, the attempt furthest above its reservation."""
        key = f"{rising.attempt.run_id}/{rising.attempt.attempt}"
        if rising.using > rising.attempt.limits.memory_bytes:
            self.stats["oom"] += 1
            self._remember(rising, rising.attempt.limits.memory_bytes, out_of_memory=True)
            self._kill(key, rising)
            return
        node = self.nodes[rising.node_id]
        while (victim_key := self._evicted(node)) is not None:
            victim = node.running[victim_key]
            self.stats["evicted"] += 1
            self._remember(victim, victim.using, out_of_memory=False, evicted=True)
            self._kill(victim_key, victim)

    def _evicted(self, node: _Node) -> str | None:
        """The attempt the node's agent evicts now, if any (by the agent's own rule)."""
        keys = {(r.attempt.run_id, "", r.attempt.attempt): k for k, r in node.running.items()}
        held = [
            Held(key, r.using, r.attempt.need.memory_bytes, r.started)
            for key, r in ((key, node.running[k]) for key, k in keys.items())
        ]
        chosen = eviction(self.fleet.capacity.memory_bytes, held)
        return None if chosen is None else keys[chosen.key]

    def _kill(self, key: str, running: _Running) -> None:
        self._stop(key)
        self._queue(running.run, running.attempt.attempt + 1)

    def _stop(self, key: str) -> None:
        running = self.running.pop(key)
        node = self.nodes[running.node_id]
        del node.running[key]
        if not node.running:
            node.idle_since = self.now
        self.changed = True

    def _remember(
        self, running: _Running, peak: int, *, out_of_memory: bool, evicted: bool = False
    ) -> None:
        past = self.history.setdefault(running.run.kind.name, deque(maxlen=HISTORY))
        past.appendleft(
            PastAttempt(
                peak_memory_bytes=peak,
                peak_cpu_millis=running.run.cpu_millis,
                limit_memory_bytes=running.attempt.limits.memory_bytes,
                out_of_memory=out_of_memory,
                mean_memory_bytes=running.mean_memory(self.now),
                evicted=evicted,
                run_id=str(running.run.index),
                run_seconds=self.now - running.started,
            )
        )

    # nodes

    def _scale(self) -> None:
        """What the provisioner's scaling says: start nodes for what waits for room,
        drain nodes idle too long, stop drained ones."""
        fleet = self.fleet
        plan = plan_scaling(
            [fleet.node_class],
            [
                FleetNode(
                    n.node_id,
                    fleet.node_class.name,
                    connected=n.ready,
                    placements=len(n.running),
                    draining=n.draining,
                    idle_since=None if n.running else EPOCH + timedelta(seconds=n.idle_since),
                )
                for n in self.nodes.values()
            ],
            [attempt.need for attempt in self.for_capacity],
            EPOCH + timedelta(seconds=self.now),
            timedelta(seconds=fleet.idle_after),
        )
        for node_id in plan.stop:
            del self.nodes[node_id]
        for node_id in plan.drain:
            self.nodes[node_id].draining = True
        for _ in plan.start:
            self._ask_node(ready=False)

    def _ask_node(self, *, ready: bool) -> None:
        node = _Node(next(self.node_names), self.now, ready=ready, idle_since=self.now)
        self.nodes[node.node_id] = node
        if not ready:
            self._at(self.now + self.fleet.boot, "ready", node.node_id)
        self.peak_nodes = max(self.peak_nodes, len(self.nodes))
        self.changed = True
