"""Scaling as pure decisions: which node classes to start for the attempts waiting for room,
which idle nodes to drain, which drained nodes to stop; and node classes as configured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strata.core.errors import ConfigError
from strata.provisioner.domain.resources import GIB, Resources
from strata.provisioner.domain.scaling import FleetNode, plan_scaling
from strata.provisioner.fleet import check_classes
from strata.provisioner.providers import NodeClassSpec
from strata.provisioner.providers.local import LocalProvider
from strata.provisioner.settings import ProvisionerSettings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
IDLE_AFTER = timedelta(minutes=5)
SMALL = NodeClassSpec("small", "local", Resources(2000, 8 * GIB), max_nodes=4)
LARGE = NodeClassSpec("large", "local", Resources(8000, 32 * GIB), max_nodes=2)


def need(cpu: float, memory_gib: int, gpus: int = 0) -> Resources:
    return Resources(int(cpu * 1000), memory_gib * GIB, gpus)


def idle(node_id: str, node_class: str = "small", for_: timedelta = IDLE_AFTER) -> FleetNode:
    return FleetNode(node_id, node_class, connected=True, idle_since=NOW - for_)


def test_waiting_attempts_are_packed_first_fit_decreasing_into_the_smallest_class_that_fits() -> (
    None
):
    # Largest first: 6 GiB opens a small node, 5 GiB a second one, then the 2 GiB
    # and 2 GiB attempts fill the holes those left: two nodes, not four.
    waiting = [need(0.5, 2), need(0.5, 6), need(0.5, 2), need(0.5, 5)]
    plan = plan_scaling([LARGE, SMALL], [], waiting, NOW, IDLE_AFTER)
    assert plan.start == ("small", "small")


def test_an_attempt_only_a_large_class_can_hold_starts_a_large_node() -> None:
    plan = plan_scaling([SMALL, LARGE], [], [need(4, 16), need(1, 2)], NOW, IDLE_AFTER)
    # the small attempt fits in the large node's remaining room
    assert plan.start == ("large",)


def test_nodes_already_starting_are_room_so_a_later_round_starts_no_more() -> None:
    starting = FleetNode("small-1", "small", connected=False, idle_since=NOW)
    plan = plan_scaling([SMALL], [starting], [need(1, 4), need(1, 4)], NOW, IDLE_AFTER)
    assert plan.start == ()
    assert plan.drain == ()


def test_a_class_stops_at_its_max() -> None:
    plan = plan_scaling([SMALL], [], [need(2, 8)] * 10, NOW, IDLE_AFTER)
    assert plan.start == ("small",) * SMALL.max_nodes


def test_a_full_class_gives_way_to_the_next_that_fits() -> None:
    full = [FleetNode(f"small-{i}", "small", connected=True, placements=1) for i in range(4)]
    plan = plan_scaling([SMALL, LARGE], full, [need(1, 4)], NOW, IDLE_AFTER)
    assert plan.start == ("large",)


def test_the_provider_budget_bounds_what_is_started() -> None:
    budget = {"local": need(5, 20)}  # two small nodes' worth, not three
    plan = plan_scaling([SMALL], [], [need(2, 8)] * 3, NOW, IDLE_AFTER, budget)
    assert plan.start == ("small", "small")
    running = [FleetNode("small-1", "small", connected=True, placements=1)]
    plan = plan_scaling([SMALL], running, [need(2, 8)] * 3, NOW, IDLE_AFTER, budget)
    assert plan.start == ("small",)


def test_an_attempt_no_class_can_hold_starts_nothing() -> None:
    assert plan_scaling([SMALL, LARGE], [], [need(1, 64)], NOW, IDLE_AFTER).start == ()
    assert plan_scaling([SMALL], [], [need(1, 1, gpus=1)], NOW, IDLE_AFTER).start == ()


def test_min_nodes_are_started_and_kept_even_when_idle() -> None:
    kept = NodeClassSpec("small", "local", Resources(2000, 8 * GIB), min_nodes=2, max_nodes=4)
    assert plan_scaling([kept], [], [], NOW, IDLE_AFTER).start == ("small", "small")
    nodes = [idle("small-1", for_=IDLE_AFTER * 3), idle("small-2"), idle("small-3")]
    plan = plan_scaling([kept], nodes, [], NOW, IDLE_AFTER)
    assert plan.start == ()
    assert plan.drain == ("small-1",)  # the longest idle goes; two stay


def test_a_node_is_drained_only_after_it_was_idle_for_idle_after() -> None:
    recent = idle("small-1", for_=IDLE_AFTER - timedelta(seconds=1))
    assert plan_scaling([SMALL], [recent], [], NOW, IDLE_AFTER).drain == ()
    assert plan_scaling([SMALL], [idle("small-1")], [], NOW, IDLE_AFTER).drain == ("small-1",)


def test_a_node_with_placements_is_never_drained() -> None:
    busy = FleetNode("small-1", "small", connected=True, placements=1, idle_since=None)
    # even with a stale idle mark, a placement keeps it
    marked = FleetNode(
        "small-2", "small", connected=True, placements=2, idle_since=NOW - timedelta(days=1)
    )
    plan = plan_scaling([SMALL], [busy, marked], [], NOW, IDLE_AFTER)
    assert plan.drain == ()
    assert plan.stop == ()


def test_a_starting_node_the_waiting_attempts_need_is_not_drained() -> None:
    starting = FleetNode("small-1", "small", connected=False, idle_since=NOW - IDLE_AFTER * 2)
    assert plan_scaling([SMALL], [starting], [need(1, 1)], NOW, IDLE_AFTER).drain == ()
    assert plan_scaling([SMALL], [starting], [], NOW, IDLE_AFTER).drain == ("small-1",)


def test_drained_nodes_with_no_placement_are_stopped_and_others_wait() -> None:
    drained = FleetNode("small-1", "small", connected=True, draining=True)
    still = FleetNode("small-2", "small", connected=True, draining=True, placements=1)
    plan = plan_scaling([SMALL], [drained, still], [], NOW, IDLE_AFTER)
    assert plan.stop == ("small-1",)


def test_node_classes_are_read_from_json_with_kubernetes_quantities() -> None:
    settings = ProvisionerSettings(
        node_classes={"small": {"provider": "local", "cpu": "500m", "memory": "1.5Gi", "max": 3}}
    )
    assert settings.node_classes["small"] == NodeClassSpec(
        "small", "local", Resources(500, 3 * GIB // 2), min_nodes=0, max_nodes=3
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"provider": "local", "cpu": "2x", "memory": "1Gi"}, "node class 'bad': cpu: '2x'"),
        ({"provider": "cloud", "cpu": "2", "memory": "1Gi"}, "provider 'cloud' is not known"),
        ({"provider": "local", "cpu": "2", "memory": "1Gi", "min": 3, "max": 2}, "min 3"),
    ],
)
def test_a_wrong_node_class_is_refused_naming_it(raw: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError, match="node class 'bad'") as raised:
        ProvisionerSettings(node_classes={"bad": raw})
    assert expected in str(raised.value)


def test_a_class_larger_than_its_provider_can_give_is_refused_naming_it(tmp_path: Path) -> None:
    provider = LocalProvider(need(4, 16), "127.0.0.1:1", tmp_path)
    check_classes([SMALL], {"local": provider})
    with pytest.raises(ConfigError, match=r"node class 'large'.*larger than provider 'local'"):
        check_classes([SMALL, LARGE], {"local": provider})
