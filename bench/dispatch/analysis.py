"""From the events of a run to the figures: hops, the stages of a hop, transition rates.

Pure functions over :class:`~bench.dispatch.observer.Seen` records, so that the
arithmetic is tested without a stack. A hop is measured as the issue defines it:
from the upstream attempt's ``TaskFinished`` (its envelope time) to the moment the
downstream no-op's code ran (its own ``time.time_ns()``). Every process runs on
this machine, so their clocks are one clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.dispatch.observer import Seen
from strata.api.scheduler.v1 import scheduler_pb2 as spb

STAGES = (
    "upstream TaskFinished recorded → provisioner's outbox relay sends it (Kafka record time, ms)",
    "→ scheduler consumes it and requests the next (TaskStateChanged REQUESTED)",
    "→ outbox relay sends TaskRequested (Kafka record time, ms)",
    "→ provisioner places it (TaskPlaced)",
    "→ provisioner records the agent's TaskStarted",
    "→ the no-op's code runs in its worker",
)
"""The stages of one hop, in order; their durations add up to the hop."""
TAIL = "after the hop: the no-op's code ran → provisioner records its TaskFinished"
"""What a chain spends per task outside the hops: the worker answering, the agent's report."""
NS = 1e-9


@dataclass(frozen=True)
class Timeline:
    """When each step of one task's first attempt happened, in ns since the epoch."""

    requested_ns: int
    relayed_ns: int
    placed_ns: int
    started_ns: int
    ran_ns: int
    finished_ns: int
    finished_relayed_ns: int


@dataclass(frozen=True)
class Hop:
    """One upstream → downstream step of a chain, in seconds."""

    seconds: float
    """Upstream ``TaskFinished`` → downstream code running."""
    code_to_code: float
    """Upstream code running → downstream code running (what Prefect's side measures)."""
    stages: tuple[float, ...]
    """Durations of :data:`STAGES`; they add up to :attr:`seconds`."""
    tail: float
    """Downstream code ran → its ``TaskFinished`` (:data:`TAIL`)."""


@dataclass(frozen=True)
class Burst:
    """Durable task state transitions of many runs at once."""

    transitions: int
    seconds: float
    """First to last transition."""
    rate: float
    """Transitions per second over :attr:`seconds`."""
    peak: int
    """Most transitions inside any one-second window."""


def timelines(events: Sequence[Seen]) -> dict[str, Timeline]:
    """Each task's timeline from a run's events; a step missing is a ValueError naming it."""
    first: dict[tuple[str, str], Seen] = {}
    for seen in events:
        if seen.kind == "TaskStateChanged":
            if seen.state != spb.TASK_STATE_REQUESTED:
                continue
            step = "requested"
        elif seen.kind in _STEPS:
            step = _STEPS[seen.kind]
        else:
            continue
        first.setdefault((seen.task_id, step), seen)
    tasks = sorted({task for task, _ in first})
    return {task: _timeline(task, first) for task in tasks}


_STEPS = {
    "TaskRequested": "relayed",
    "TaskPlaced": "placed",
    "TaskStarted": "started",
    "TaskFinished": "finished",
}


def _timeline(task: str, first: Mapping[tuple[str, str], Seen]) -> Timeline:
    def at(step: str) -> Seen:
        try:
            return first[(task, step)]
        except KeyError:
            raise ValueError(f"task {task!r}: no {step} event was seen") from None

    return Timeline(
        requested_ns=at("requested").occurred_ns,
        relayed_ns=at("relayed").record_ns,
        placed_ns=at("placed").occurred_ns,
        started_ns=at("started").occurred_ns,
        ran_ns=at("finished").ran_ns,
        finished_ns=at("finished").occurred_ns,
        finished_relayed_ns=at("finished").record_ns,
    )


def chain_hops(lines: Mapping[str, Timeline], order: Sequence[str]) -> list[Hop]:
    """The hops between consecutive tasks of ``order`` (a chain, upstream first)."""
    hops = []
    for upstream, downstream in itertools.pairwise(order):
        up, down = lines[upstream], lines[downstream]
        marks = (
            up.finished_ns,
            up.finished_relayed_ns,
            down.requested_ns,
            down.relayed_ns,
            down.placed_ns,
            down.started_ns,
            down.ran_ns,
        )
        hops.append(
            Hop(
                seconds=(down.ran_ns - up.finished_ns) * NS,
                code_to_code=(down.ran_ns - up.ran_ns) * NS,
                stages=tuple((b - a) * NS for a, b in itertools.pairwise(marks)),
                tail=(down.finished_ns - down.ran_ns) * NS,
            )
        )
    return hops


def code_to_code(ran_ns: Sequence[int]) -> list[float]:
    """Seconds between consecutive code runs of a chain, in chain order."""
    return [(b - a) * NS for a, b in itertools.pairwise(ran_ns)]


def burst(occurred_ns: Sequence[int]) -> Burst:
    """The rate of transitions at the times ``occurred_ns`` (any order), and the peak second."""
    if len(occurred_ns) < 2:
        raise ValueError(f"a rate needs at least 2 transitions, got {len(occurred_ns)}")
    times = sorted(occurred_ns)
    seconds = (times[-1] - times[0]) * NS
    peak, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1_000_000_000:
            start += 1
        peak = max(peak, end - start + 1)
    rate = len(times) / seconds if seconds > 0 else float(len(times))
    return Burst(transitions=len(times), seconds=seconds, rate=rate, peak=peak)
