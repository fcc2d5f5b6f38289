"""Draining a node: it takes no new placement, what runs on it finishes, and once
nothing does it is DRAINED (``NodeDrained`` announces it).

One path for every drain: an operator's ``DrainNode``, the fleet scaling an idle
node down, and an agent saying it is leaving (``AgentLeaving``). They differ in
what they keep: an operator's or the fleet's drain is *kept*, so the node stays
drained when its agent registers again (after a provisioner restart every agent
does), until the node is declared lost; an agent's leaving ends with its session,
so a restarted agent takes work again.

A node whose stream closed (state LOST) takes no work already and is not drained:
there is no agent to tell, and its attempts follow the lease rules.

A DRAINING node becomes DRAINED in the transaction that drops its last placement
(:meth:`strata.provisioner.store.NodeStore.settle_drain`, the same rule as
:func:`drain` in one statement, on the hot path of every ended attempt).
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.api.provisioner.v1.provisioner_pb2 import (
    NODE_STATE_DRAINED,
    NODE_STATE_DRAINING,
    NODE_STATE_LOST,
    NODE_STATE_READY,
    NodeState,
)

AGENT_LEAVING = "the agent is leaving"
"""The reason of a drain its agent asked for without naming one."""


class NodeGoneError(Exception):
    """The node's stream closed (or it was declared lost): nothing to drain."""


@dataclass(frozen=True)
class Drain:
    """Why a node drains, whether its agent exits once empty, and whether the drain
    holds when the agent registers again."""

    reason: str
    shutdown_when_empty: bool = False
    kept: bool = True


@dataclass(frozen=True)
class DrainStep:
    """The node's state after a drain step, and whether it just became DRAINED (so
    ``NodeDrained`` is due)."""

    state: NodeState.ValueType
    drained_now: bool


def drain(state: NodeState.ValueType, placements: int) -> DrainStep:
    """Start (or repeat) a drain of a node in ``state`` with ``placements`` attempts
    placed on it: DRAINING while any is, else DRAINED. Draining again changes nothing;
    a LOST node raises :class:`NodeGoneError`."""
    if state == NODE_STATE_LOST:
        raise NodeGoneError("its stream closed: it takes no work, and has no agent to drain")
    after = NODE_STATE_DRAINING if placements else NODE_STATE_DRAINED
    if state == NODE_STATE_DRAINED:
        after = NODE_STATE_DRAINED
    return DrainStep(after, drained_now=after == NODE_STATE_DRAINED and state != after)


def registered(kept: bool, placements: int) -> NodeState.ValueType:
    """The state of a node whose agent registers: READY, unless a kept drain holds it
    (DRAINING while attempts are placed on it, else DRAINED)."""
    if not kept:
        return NODE_STATE_READY
    return NODE_STATE_DRAINING if placements else NODE_STATE_DRAINED
