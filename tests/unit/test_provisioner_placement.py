"""Placement as a pure decision: bin packing, queue order, warm bundles, the reasons."""

from __future__ import annotations

import pytest

from strata.core.errors import InvalidArgumentError
from strata.provisioner.domain.placement import Attempt, Node, place, queue_order
from strata.provisioner.domain.registration import Registration, check
from strata.provisioner.domain.reports import Effect, effect
from strata.provisioner.domain.resources import GIB, Resources


def _res(cpu: float = 1, mem_gib: float = 1, gpus: int = 0) -> Resources:
    return Resources(int(cpu * 1000), int(mem_gib * GIB), gpus)


def _attempt(
    task_id: str,
    limits: Resources | None = None,
    *,
    priority: int = 0,
    sequence: int = 0,
    bundle_sha256: str = "",
) -> Attempt:
    return Attempt(
        run_id="run-1",
        task_id=task_id,
        attempt=1,
        limits=limits or _res(),
        priority=priority,
        sequence=sequence,
        bundle_sha256=bundle_sha256,
    )


def _placed(nodes: list[Node], attempts: list[Attempt]) -> dict[str, str]:
    return {p.attempt.task_id: p.node_id for p in place(nodes, attempts).placed}


def test_an_attempt_that_fits_is_placed_and_one_that_does_not_waits() -> None:
    nodes = [Node("a", _res(4, 8))]
    plan = place(nodes, [_attempt("small", _res(2, 4)), _attempt("big", _res(2, 16))])
    assert [(p.attempt.task_id, p.node_id) for p in plan.placed] == [("small", "a")]
    assert [w.attempt.task_id for w in plan.waiting] == ["big"]


def test_the_fullest_node_that_fits_is_chosen() -> None:
    nodes = [
        Node("empty", _res(8, 16)),
        Node("half", _res(8, 16), reserved=_res(4, 8)),
        Node("nearly-full", _res(8, 16), reserved=_res(7, 15)),
    ]
    assert _placed(nodes, [_attempt("t", _res(2, 2))]) == {"t": "half"}
    assert _placed(nodes, [_attempt("t", _res(1, 1))]) == {"t": "nearly-full"}


def test_reservations_of_one_round_count_for_the_next_attempts() -> None:
    nodes = [Node("a", _res(2, 2)), Node("b", _res(2, 2))]
    placed = _placed(nodes, [_attempt("one", _res(2, 2)), _attempt("two", _res(2, 2))])
    assert sorted(placed.values()) == ["a", "b"]
    plan = place([Node("a", _res(2, 2))], [_attempt("one", _res(2, 2)), _attempt("two")])
    assert [w.attempt.task_id for w in plan.waiting] == ["two"]


def test_higher_priority_first_then_first_requested_first() -> None:
    attempts = [
        _attempt("low-early", priority=0, sequence=1),
        _attempt("high-late", priority=5, sequence=4),
        _attempt("high-early", priority=5, sequence=2),
        _attempt("low-late", priority=0, sequence=3),
    ]
    order = [a.task_id for a in queue_order(attempts)]
    assert order == ["high-early", "high-late", "low-early", "low-late"]
    # One slot: the queue order decides who gets it.
    plan = place([Node("a", _res(1, 1))], attempts)
    assert [p.attempt.task_id for p in plan.placed] == ["high-early"]
    assert [w.attempt.task_id for w in plan.waiting] == ["high-late", "low-early", "low-late"]


def test_a_node_holding_the_bundle_warm_is_preferred_over_a_fuller_one() -> None:
    nodes = [
        Node("fuller", _res(8, 16), reserved=_res(6, 12)),
        Node("warm", _res(8, 16), warm_bundles=frozenset({"abc"})),
    ]
    plan = place(nodes, [_attempt("t", bundle_sha256="abc")])
    assert [(p.node_id, p.warm) for p in plan.placed] == [("warm", True)]
    # Without the bundle warm anywhere, bin packing decides again.
    assert _placed(nodes, [_attempt("t", bundle_sha256="other")]) == {"t": "fuller"}


def test_a_warm_node_without_room_is_not_chosen() -> None:
    nodes = [
        Node("warm-full", _res(1, 1), reserved=_res(1, 1), warm_bundles=frozenset({"abc"})),
        Node("cold", _res(4, 4)),
    ]
    assert _placed(nodes, [_attempt("t", bundle_sha256="abc")]) == {"t": "cold"}


def test_an_attempt_larger_than_every_node_says_what_it_needs_and_the_largest_has() -> None:
    nodes = [Node("a", _res(4, 32)), Node("b", _res(16, 8))]
    plan = place(nodes, [_attempt("t", _res(2, 64))])
    assert plan.waiting[0].reason == "needs 64 GiB memory; the largest node has 32 GiB"
    plan = place(nodes, [_attempt("t", _res(32, 1, gpus=2))])
    assert plan.waiting[0].reason == (
        "needs 32 CPU; the largest node has 16 CPU; needs 2 GPUs; the largest node has 0 GPUs"
    )


def test_an_attempt_no_single_node_can_hold_says_so() -> None:
    nodes = [Node("cpu", _res(16, 4)), Node("mem", _res(2, 64))]
    plan = place(nodes, [_attempt("t", _res(8, 32))])
    assert plan.waiting[0].reason == (
        "needs 8 CPU, 32 GiB memory, 0 GPUs at once; no node has all of it"
    )


def test_an_attempt_that_fits_a_busy_node_waits_for_room() -> None:
    nodes = [Node("a", _res(4, 8), reserved=_res(4, 8)), Node("b", _res(4, 8), reserved=_res(3, 1))]
    plan = place(nodes, [_attempt("t", _res(2, 2))])
    assert plan.waiting[0].reason.startswith("all nodes busy: needs 2 CPU, 2 GiB memory, 0 GPUs")


def test_without_nodes_attempts_wait_for_one() -> None:
    plan = place([], [_attempt("t")])
    assert plan.waiting[0].reason == "no node is connected"


def test_a_zero_request_fits_any_node() -> None:
    nodes = [Node("a", _res(1, 1), reserved=_res(1, 1))]
    assert _placed(nodes, [_attempt("t", Resources())]) == {"t": "a"}


@pytest.mark.parametrize(
    ("capacity", "node_id", "field"),
    [
        (Resources(-1000, GIB, 0), "n1", "registration.capacity.cpu_millis"),
        (Resources(0, GIB, 0), "n1", "registration.capacity.cpu_millis"),
        (Resources(1000, 0, 0), "n1", "registration.capacity.memory_bytes"),
        (Resources(1000, -5, 0), "n1", "registration.capacity.memory_bytes"),
        (Resources(1000, GIB, -1), "n1", "registration.capacity.gpus"),
        (Resources(1000, GIB, 0), "", "registration.node_id"),
        (Resources(1000, GIB, 0), "bad/name", "registration.node_id"),
    ],
)
def test_nonsense_registration_is_refused_naming_the_field(
    capacity: Resources, node_id: str, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        check(Registration(node_id=node_id, hostname="h", capacity=capacity))
    assert refused.value.field == field


def test_a_sensible_registration_is_accepted() -> None:
    registration = Registration(node_id="node-1.local", hostname="h", capacity=_res(2, 4, 1))
    assert check(registration) is registration


def test_amounts_read_as_people_write_them() -> None:
    assert str(Resources(500, 512 * 1024**2, 1)) == "0.5 CPU, 512 MiB memory, 1 GPU"
    assert str(Resources(10_000_000, 3 * GIB // 2, 2)) == "10000 CPU, 1.5 GiB memory, 2 GPUs"


def test_a_report_counts_only_from_the_node_the_attempt_is_placed_on() -> None:
    assert effect("task_started", "node-a", "node-a") is Effect.STARTED
    assert effect("task_finished", "node-a", "node-a") is Effect.ENDED
    assert effect("task_failed", "node-a", "node-a") is Effect.ENDED
    assert effect("task_usage", "node-a", "node-a") is Effect.SAMPLED
    assert effect("task_finished", "node-a", "node-b") is Effect.STALE
    assert effect("task_started", None, "node-a") is Effect.STALE
    with pytest.raises(ValueError, match="heartbeat"):
        effect("heartbeat", "node-a", "node-a")
