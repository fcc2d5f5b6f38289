"""What a cancellation request does to an attempt, by where the attempt is.

A queued attempt has no node: it leaves the queue and is reported cancelled at
once. A placed attempt may be running on its node: the agent is told to stop it
(SIGTERM, then SIGKILL after the grace) and its own report says cancelled. An
attempt the provisioner holds no more (ended, lost, or never requested) is left
alone: whatever ended it was announced already.
"""

from __future__ import annotations

from enum import Enum


class Where(Enum):
    """Where the attempt stands when its cancellation is requested."""

    QUEUED = "queued"
    PLACED = "placed"
    GONE = "gone"


class Step(Enum):
    """What the provisioner does about it."""

    REPORT_CANCELLED = "report cancelled"
    TELL_THE_AGENT = "tell the agent"
    NOTHING = "nothing"


def step(where: Where) -> Step:
    """The step a cancellation request takes for an attempt that is ``where``."""
    return {
        Where.QUEUED: Step.REPORT_CANCELLED,
        Where.PLACED: Step.TELL_THE_AGENT,
        Where.GONE: Step.NOTHING,
    }[where]


def reason_or_default(reason: str) -> str:
    """The reason recorded with the cancelled attempt; never empty."""
    return reason.strip() or "the run was cancelled"
