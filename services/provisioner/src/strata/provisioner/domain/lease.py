"""How long a node counts as alive without a word from its agent.

The agent is told these in ``AgentAccepted``; placement only uses nodes heard
from within the lease, so a node whose agent went silent (or whose stream ended
with a provisioner that was killed) gets no new work.
"""

from __future__ import annotations

from datetime import datetime, timedelta

HEARTBEAT_INTERVAL = timedelta(seconds=5)
LEASE = timedelta(seconds=15)
"""Three heartbeats: one late or lost heartbeat does not cost the node its work."""
USAGE_INTERVAL = timedelta(seconds=5)


def alive_since(now: datetime) -> datetime:
    """The earliest last-heard time of a node still within its lease at ``now``."""
    return now - LEASE
