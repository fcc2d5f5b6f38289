"""Draining a node: DRAINING while attempts are placed on it, DRAINED once none is, the
same again on a second drain, and a kept drain that holds when the agent registers
again while the agent's own leaving does not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.provisioner.domain.draining import DrainStep, NodeGoneError, drain, registered
from strata.provisioner.fleet_store import ProvisionedNode


def test_a_node_with_attempts_drains_and_one_without_is_drained_at_once() -> None:
    assert drain(pb.NODE_STATE_READY, placements=2) == DrainStep(pb.NODE_STATE_DRAINING, False)
    assert drain(pb.NODE_STATE_READY, placements=0) == DrainStep(pb.NODE_STATE_DRAINED, True)


def test_draining_again_changes_nothing_and_announces_nothing_twice() -> None:
    assert drain(pb.NODE_STATE_DRAINING, placements=1) == DrainStep(pb.NODE_STATE_DRAINING, False)
    assert drain(pb.NODE_STATE_DRAINED, placements=0) == DrainStep(pb.NODE_STATE_DRAINED, False)


def test_a_drained_node_stays_drained_whatever_is_placed() -> None:
    """An attempt an agent reports after the drain finished never un-drains the node."""
    assert drain(pb.NODE_STATE_DRAINED, placements=1).state == pb.NODE_STATE_DRAINED


def test_a_node_whose_stream_closed_is_not_drained() -> None:
    with pytest.raises(NodeGoneError, match="stream closed"):
        drain(pb.NODE_STATE_LOST, placements=1)


def test_a_kept_drain_holds_when_the_agent_registers_again() -> None:
    assert registered(kept=True, placements=1) == pb.NODE_STATE_DRAINING
    assert registered(kept=True, placements=0) == pb.NODE_STATE_DRAINED


def test_without_a_kept_drain_a_registering_node_takes_work() -> None:
    assert registered(kept=False, placements=3) == pb.NODE_STATE_READY


def test_the_fleet_counts_a_drained_node_as_going_like_a_draining_one() -> None:
    """A node an operator drained is stopped by the fleet once empty, not counted as room."""

    def node(state: pb.NodeState.ValueType, lost: bool = False) -> ProvisionedNode:
        now = datetime(2026, 12, 1, tzinfo=UTC)
        return ProvisionedNode("n", "small", "local", "", now, None, state, lost, now, 0)

    assert node(pb.NODE_STATE_DRAINED).draining
    assert node(pb.NODE_STATE_DRAINING).draining
    assert not node(pb.NODE_STATE_READY).draining
    assert not node(pb.NODE_STATE_DRAINED, lost=True).draining
