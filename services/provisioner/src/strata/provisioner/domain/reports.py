"""What an agent's report about an attempt does to its placement.

A report counts only when it comes from the node the attempt is placed on now:
a report about an attempt placed elsewhere, finished already, or never placed
(an older attempt of the task, a node that reconnected late) is stale and is
neither applied nor announced. The attempt number is the fencing token, so a
newer attempt of the same task is a different placement.
"""

from __future__ import annotations

from enum import Enum


class Effect(Enum):
    """What a report does: nothing (stale), mark running, free the room, or pass usage on."""

    STALE = "stale"
    STARTED = "started"
    ENDED = "ended"
    SAMPLED = "sampled"


_EFFECTS = {
    "task_started": Effect.STARTED,
    "task_finished": Effect.ENDED,
    "task_failed": Effect.ENDED,
    "task_usage": Effect.SAMPLED,
}

REPORTS = frozenset(_EFFECTS)
"""The ``ConnectRequest`` fields that report on an attempt."""


def effect(report: str, placed_on: str | None, reporting_node: str) -> Effect:
    """The effect of ``report`` (a ``ConnectRequest`` field) from ``reporting_node``.

    ``placed_on`` is the node the attempt is placed on now, None when it is not placed.
    """
    if report not in _EFFECTS:
        raise ValueError(
            f"{report!r} is not a report on an attempt; expected one of {sorted(_EFFECTS)}"
        )
    if placed_on is None or placed_on != reporting_node:
        return Effect.STALE
    return _EFFECTS[report]
