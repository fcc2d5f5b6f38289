"""Node loss and reconciliation as pure decisions: when a node is lost, what an agent must stop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from strata.provisioner.domain.lease import (
    LEASE,
    alive_since,
    declare,
    heartbeat_interval,
    lost_before,
)
from strata.provisioner.domain.reconcile import to_cancel

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)


def test_nodes_heard_from_before_the_lease_are_lost() -> None:
    before = lost_before(NOW, watching_since=LONG_AGO, lease=LEASE)
    assert before == alive_since(NOW, LEASE) == NOW - LEASE


def test_no_node_is_lost_until_a_whole_lease_passed_since_the_provisioner_started_watching() -> (
    None
):
    started = NOW - LEASE + timedelta(seconds=1)
    assert lost_before(NOW, watching_since=started, lease=LEASE) is None
    assert lost_before(started + LEASE, watching_since=started, lease=LEASE) == started


def test_a_loss_says_how_long_the_node_was_silent() -> None:
    loss = declare("node-a", NOW - timedelta(seconds=20), NOW, LEASE)
    assert loss.node_id == "node-a"
    assert loss.reason == f"lease expired: no message for 20s (lease {LEASE.total_seconds():g}s)"


def test_a_shorter_lease_loses_nodes_sooner_and_asks_for_heartbeats_within_it() -> None:
    lease = timedelta(seconds=3)
    assert lost_before(NOW, watching_since=LONG_AGO, lease=lease) == NOW - lease
    assert heartbeat_interval(lease) == timedelta(seconds=1)
    assert declare("node-a", NOW - timedelta(seconds=4), NOW, lease).reason == (
        "lease expired: no message for 4s (lease 3s)"
    )


def test_an_agent_stops_what_it_runs_that_is_not_placed_on_it() -> None:
    running = [("r", "a", 1), ("r", "b", 2), ("r", "c", 1)]
    placed = {("r", "b", 2), ("r", "c", 2)}
    assert to_cancel(running, placed, cancelled=set()) == [("r", "a", 1), ("r", "c", 1)]


def test_an_attempt_is_cancelled_once_per_session() -> None:
    running = [("r", "a", 1), ("r", "a", 1)]
    assert to_cancel(running, placed=set(), cancelled=set()) == [("r", "a", 1)]
    assert to_cancel(running, placed=set(), cancelled={("r", "a", 1)}) == []
