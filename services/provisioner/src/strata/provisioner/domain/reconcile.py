"""What a connected agent must stop: attempts it runs that are not placed on it.

An agent lists what it runs when it registers and in every heartbeat. After its
node was lost (and its attempts re-requested elsewhere), after a cancellation,
or after a provisioner restart, it may run attempts the provisioner no longer
considers current; each gets one ``TaskCancellation`` per session, so a fenced
attempt stops instead of racing the attempt that replaced it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import timedelta

AttemptKey = tuple[str, str, int]
"""(run id, task id, attempt number): the attempt number is the fencing token."""

NOT_CURRENT = "the provisioner no longer considers this attempt current"
CANCEL_GRACE = timedelta(seconds=10)
"""How long a cancelled attempt may take to stop cleanly before its worker is killed."""


def to_cancel(
    running: Iterable[AttemptKey],
    placed: Collection[AttemptKey],
    cancelled: Collection[AttemptKey],
) -> list[AttemptKey]:
    """Attempts the agent ``running`` them must stop: not ``placed`` on its node, and not
    ``cancelled`` already in this session, in the order the agent listed them."""
    return [key for key in dict.fromkeys(running) if key not in placed and key not in cancelled]
