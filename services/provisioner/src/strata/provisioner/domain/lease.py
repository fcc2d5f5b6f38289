"""How long a node counts as alive without a word from its agent, and when it is lost.

The agent is told these in ``AgentAccepted``; placement only uses nodes heard
from within the lease, so a node whose agent went silent (or whose stream ended
with a provisioner that was killed) gets no new work. A node past its lease is
declared lost, and its attempts with it; a stream that merely closed is not
enough, so an agent that reconnects within the lease (a network blip, a
provisioner restart) keeps its attempts.

The lease is the provisioner's ``STRATA_PROVISIONER_LEASE`` (15 s by default);
agents are told to heartbeat every third of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

LEASE = timedelta(seconds=15)
"""The default lease: three heartbeats of 5 s."""
HEARTBEATS_PER_LEASE = 3
"""One late or lost heartbeat does not cost the node its work."""
USAGE_INTERVAL = timedelta(seconds=5)


def heartbeat_interval(lease: timedelta) -> timedelta:
    """How often agents are asked to heartbeat, so that a lease spans three heartbeats."""
    return lease / HEARTBEATS_PER_LEASE


def alive_since(now: datetime, lease: timedelta) -> datetime:
    """The earliest last-heard time of a node still within its lease at ``now``."""
    return now - lease


def lost_before(now: datetime, watching_since: datetime, lease: timedelta) -> datetime | None:
    """Nodes last heard from before the returned time are lost at ``now``; None: none is.

    ``watching_since`` is when this provisioner started watching leases: a node
    cannot have been heard from while no provisioner listened, so until a whole
    lease has passed since then, every node still has the chance to reconnect
    (after a provisioner restart, its agents do so within seconds).
    """
    if now - lease < watching_since:
        return None
    return alive_since(now, lease)


@dataclass(frozen=True)
class Loss:
    """Why a node is declared lost, said the same way in NodeLost and each TaskLost."""

    node_id: str
    reason: str


def declare(node_id: str, last_seen_at: datetime, now: datetime, lease: timedelta) -> Loss:
    """The loss of ``node_id``, last heard from at ``last_seen_at``, declared at ``now``."""
    silent = max((now - last_seen_at).total_seconds(), 0.0)
    return Loss(
        node_id,
        f"lease expired: no message for {silent:.0f}s (lease {lease.total_seconds():g}s)",
    )
