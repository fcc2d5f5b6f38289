"""Placement as a pure decision: bin packing, queue order, warm bundles, the reasons;
queues: fair share by weight, quotas, per-user caps; and an index that stays exact."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.core.errors import InvalidArgumentError
from strata.provisioner.domain.placement import (
    LIFETIME_SLOT,
    Attempt,
    Node,
    Plan,
    QueueUse,
    place,
    queue_order,
    why_waiting,
)
from strata.provisioner.domain.queues import QueuePolicy, Quota
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
    queue: str = "default",
    user: str = "",
    reserve: Resources | None = None,
) -> Attempt:
    return Attempt(
        run_id="run-1",
        task_id=task_id,
        attempt=1,
        limits=limits or _res(),
        priority=priority,
        sequence=sequence,
        bundle_sha256=bundle_sha256,
        queue=queue,
        user=user,
        reserve=reserve,
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


def _lasting(task_id: str, seconds: float | None, mem_gib: float = 1) -> Attempt:
    return replace(_attempt(task_id, _res(1, mem_gib)), expected_seconds=seconds)


def test_an_attempt_goes_where_the_node_runs_at_least_as_long_before_a_fuller_node() -> None:
    nodes = [
        Node("ends-soon", _res(8, 16), reserved=_res(6, 12), runs_for=120),
        Node("runs-an-hour", _res(8, 16), reserved=_res(2, 4), runs_for=3600),
        Node("empty", _res(8, 16)),
    ]

    assert _placed(nodes, [_lasting("long", 3000)]) == {"long": "runs-an-hour"}
    # A short one extends neither node: the fullest takes it, as without expectations.
    assert _placed(nodes, [_lasting("short", 60)]) == {"short": "ends-soon"}
    assert _placed(nodes, [_lasting("unknown", None)]) == {"unknown": "ends-soon"}


def test_failing_a_node_running_as_long_the_one_ending_latest_is_extended_not_an_empty_one() -> (
    None
):
    nodes = [
        Node("ends-in-2-min", _res(8, 16), reserved=_res(6, 12), runs_for=120),
        Node("ends-in-30-min", _res(8, 16), reserved=_res(2, 4), runs_for=1800),
        Node("empty", _res(8, 16)),
    ]

    assert _placed(nodes, [_lasting("two-hours", 7200)]) == {"two-hours": "ends-in-30-min"}


def test_a_placed_attempt_makes_its_node_run_longer_for_the_next_of_the_round() -> None:
    nodes = [
        Node("a", _res(8, 16), reserved=_res(2, 4)),
        Node("b", _res(8, 16), reserved=_res(5, 10)),
    ]
    big = replace(_lasting("big", 3600), limits=_res(1, 8))  # only "a" has 8 GiB free

    placed = _placed(nodes, [big, _lasting("unknown", None), _lasting("hour", 3600)])

    # Once "big" is on "a", "a" runs an hour. An attempt without expectation takes
    # the fuller "b" (now running nothing known); the next hour-long attempt joins
    # "big" on "a" although "b" is fuller.
    assert placed == {"big": "a", "unknown": "b", "hour": "a"}


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


# --- queues: fair share, quotas, per-user caps ------------------------------------------


def _flood(queue: str, count: int, *, first: int = 0, user: str = "") -> list[Attempt]:
    return [
        _attempt(f"{queue}-{i}", queue=queue, sequence=first + i, user=user) for i in range(count)
    ]


def _slots(count: int) -> list[Node]:
    """``count`` nodes holding exactly one 1 CPU, 1 GiB attempt each."""
    return [Node(f"n{i:03d}", _res(1, 1)) for i in range(count)]


def _by_queue(plan: Plan) -> Counter[str]:
    return Counter(p.attempt.queue for p in plan.placed)


def test_contended_capacity_splits_by_queue_weight() -> None:
    queues = {"a": QueuePolicy("a", weight=1), "b": QueuePolicy("b", weight=3)}
    # Queue a asked first for everything; weights still split the room 1:3.
    attempts = _flood("a", 100) + _flood("b", 100, first=100)
    plan = place(_slots(40), attempts, queues)
    assert _by_queue(plan) == {"a": 10, "b": 30}
    # Equal weights (the default for queues without a policy): an even split.
    assert _by_queue(place(_slots(40), attempts)) == {"a": 20, "b": 20}


def test_a_flood_in_one_queue_does_not_keep_another_from_freed_room() -> None:
    # Queue a holds 36 of 40 slots and has 1,000 more waiting, all asked for
    # before b's and at a higher priority: the 4 slots that free up go to b.
    nodes = [Node(f"n{i:03d}", _res(1, 1), reserved=_res(1, 1)) for i in range(36)]
    nodes += [Node(f"free{i}", _res(1, 1)) for i in range(4)]
    flood = [_attempt(f"a-{i}", queue="a", priority=9, sequence=i, user="bot") for i in range(1000)]
    attempts = flood + _flood("b", 6, first=1000)
    use = {"a": QueueUse(reserved=_res(36, 36), running_by_user={"bot": 36})}
    plan = place(nodes, attempts, use=use)
    assert [p.attempt.task_id for p in plan.placed] == ["b-0", "b-1", "b-2", "b-3"]
    assert all(w.for_capacity for w in plan.waiting)


def test_priority_orders_attempts_within_a_queue_not_across_queues() -> None:
    attempts = [
        _attempt("a-low", queue="a", priority=0, sequence=1),
        _attempt("a-high", queue="a", priority=5, sequence=2),
        _attempt("b-low", queue="b", priority=0, sequence=3),
    ]
    use = {"a": QueueUse(reserved=_res(1, 1))}
    busy = Node("busy", _res(1, 1), reserved=_res(1, 1))
    plan = place([*_slots(3), busy], attempts, use=use)
    # b is below its share so goes first; then a's higher priority before its FIFO head.
    assert [p.attempt.task_id for p in plan.placed] == ["b-low", "a-high", "a-low"]


def test_a_quota_holds_and_the_reason_names_queue_quota_and_use() -> None:
    queues = {"team": QueuePolicy("team", quota=Quota(cpu_millis=3000))}
    use = {"team": QueueUse(reserved=_res(1, 1))}
    attempts = [
        _attempt("first", _res(1, 1), queue="team", sequence=1),
        _attempt("too-much", _res(2, 1), queue="team", sequence=2),
        _attempt("small", _res(0.5, 1), queue="team", sequence=3),
        _attempt("other-queue", _res(4, 1), queue="other", sequence=4),
    ]
    plan = place([Node("big", _res(64, 64))], attempts, queues, use)
    assert sorted(p.attempt.task_id for p in plan.placed) == ["first", "other-queue", "small"]
    [held] = plan.waiting
    assert held.attempt.task_id == "too-much"
    assert held.for_capacity is False
    assert held.reason == (
        "queue 'team' quota reached: quota 3 CPU, in use 2 CPU, 2 GiB memory, 0 GPUs, "
        "needs 2 CPU, 1 GiB memory, 0 GPUs more"
    )


def test_a_quota_counts_what_is_reserved_not_the_limits() -> None:
    queues = {"team": QueuePolicy("team", quota=Quota(memory_bytes=4 * GIB))}
    attempts = [
        _attempt(f"t{i}", _res(1, 4), queue="team", sequence=i, reserve=_res(1, 1))
        for i in range(6)
    ]
    plan = place([Node("big", _res(64, 64))], attempts, queues)
    assert len(plan.placed) == 4
    assert [w.for_capacity for w in plan.waiting] == [False, False]


def test_the_per_user_cap_holds_counting_what_already_runs() -> None:
    queues = {"team": QueuePolicy("team", max_running_per_user=2)}
    use = {"team": QueueUse(running_by_user={"alice": 1})}
    attempts = [
        *_flood("team", 3, user="alice"),
        *(_attempt(f"bob-{i}", queue="team", sequence=10 + i, user="bob") for i in range(3)),
    ]
    plan = place(_slots(10), attempts, queues, use)
    assert sorted(p.attempt.task_id for p in plan.placed) == ["bob-0", "bob-1", "team-0"]
    assert {w.attempt.task_id: w.for_capacity for w in plan.waiting} == {
        "team-1": False,
        "team-2": False,
        "bob-2": False,
    }
    reason = next(w.reason for w in plan.waiting if w.attempt.task_id == "team-1")
    assert reason == (
        "user 'alice' has 2 attempts placed or running in queue 'team'; its per-user cap is 2"
    )


def test_waiting_for_room_is_for_capacity_and_held_by_limits_is_not() -> None:
    queues = {"capped": QueuePolicy("capped", quota=Quota(gpus=0))}
    attempts = [
        _attempt("too-big", _res(64, 1), sequence=1),
        _attempt("no-room", _res(1, 1), sequence=2),
        _attempt("quota", _res(1, 1, gpus=1), queue="capped", sequence=3),
    ]
    plan = place([Node("a", _res(2, 2, gpus=1), reserved=_res(1.5, 1))], attempts, queues)
    assert {w.attempt.task_id: w.for_capacity for w in plan.waiting} == {
        "too-big": True,
        "no-room": True,
        "quota": False,
    }


def test_the_reserve_is_what_is_placed_not_the_limits() -> None:
    nodes = [Node("a", _res(4, 4))]
    attempts = [_attempt(f"t{i}", _res(1, 4), sequence=i, reserve=_res(1, 1)) for i in range(5)]
    plan = place(nodes, attempts)
    assert len(plan.placed) == 4
    assert attempts[0].need == _res(1, 1)
    assert _attempt("t", _res(1, 4)).need == _res(1, 4)


def test_why_waiting_still_explains_a_size_for_the_given_nodes() -> None:
    assert why_waiting([], _res()) == "no node is connected"
    assert why_waiting([Node("a", _res(2, 2))], _res(4, 1)) == (
        "needs 4 CPU; the largest node has 2 CPU"
    )


# --- the index is exact: same decisions as a plain scan of every node -----------------


def _reference(
    nodes: Sequence[Node],
    attempts: Sequence[Attempt],
    queues: Mapping[str, QueuePolicy],
    use: Mapping[str, QueueUse],
) -> list[tuple[str, str | None, bool]]:
    """The placement rules written as plainly as possible: every node looked at for
    every attempt. ``(task_id, node_id or None, for_capacity)`` in decision order."""
    free = {n.node_id: n.free for n in nodes}
    by_id = {n.node_id: n for n in nodes}
    lifetimes = any(a.expected_seconds is not None for a in attempts)
    slot = {n.node_id: int(n.runs_for // LIFETIME_SLOT) if lifetimes else 0 for n in nodes}
    total = Resources(
        sum(n.capacity.cpu_millis for n in nodes),
        sum(n.capacity.memory_bytes for n in nodes),
        sum(n.capacity.gpus for n in nodes),
    )
    names = sorted({a.queue for a in attempts})
    lines = {q: queue_order(a for a in attempts if a.queue == q) for q in names}
    reserved = {q: use[q].reserved if q in use else Resources() for q in names}
    running = {q: Counter(use[q].running_by_user if q in use else {}) for q in names}
    decisions: list[tuple[str, str | None, bool]] = []
    while any(lines.values()):

        def key(q: str) -> tuple[float, int, int, int]:
            r, head = reserved[q], lines[q][0]
            shares = [
                used / whole
                for used, whole in zip(
                    (r.cpu_millis, r.memory_bytes, r.gpus),
                    (total.cpu_millis, total.memory_bytes, total.gpus),
                    strict=True,
                )
                if whole
            ]
            weight = queues[q].weight if q in queues else 1.0
            return (
                max(shares, default=0.0) / weight,
                -head.priority,
                head.sequence,
                names.index(q),
            )

        q = min((q for q in names if lines[q]), key=key)
        attempt = lines[q].pop(0)
        policy = queues.get(q, QueuePolicy(q))
        need = attempt.need
        if policy.max_running_per_user and (
            running[q][attempt.user] >= policy.max_running_per_user
        ):
            decisions.append((attempt.task_id, None, False))
            continue
        if not policy.quota.allows(reserved[q] + need):
            decisions.append((attempt.task_id, None, False))
            continue
        fitting = [i for i in free if need.fits_in(free[i])]
        if not fitting:
            decisions.append((attempt.task_id, None, True))
            continue

        chosen = min(fitting, key=lambda i: _preference(by_id[i], free[i], slot[i], attempt))
        free[chosen] = free[chosen] - need
        if lifetimes and attempt.expected_seconds is not None:
            slot[chosen] = max(slot[chosen], int(attempt.expected_seconds // LIFETIME_SLOT))
        reserved[q] = reserved[q] + need
        running[q][attempt.user] += 1
        decisions.append((attempt.task_id, chosen, True))
    return decisions


def _preference(
    node: Node, free: Resources, slot: int, attempt: Attempt
) -> tuple[bool, bool, int, float, str]:
    """Warm first (the fullest of them); then the nodes expected to run at least as long
    as the attempt (in lifetime slots), the fullest of them; then the others, latest
    ending first, the fullest of those; then the smallest id."""
    warm = bool(attempt.bundle_sha256) and attempt.bundle_sha256 in node.warm_bundles
    now = Node(node.node_id, node.capacity, reserved=node.capacity - free)
    fullest = -now.fullness_with(attempt.need)
    if warm:
        return (False, False, 0, fullest, node.node_id)
    expected = attempt.expected_seconds
    own = 0 if expected is None else int(expected // LIFETIME_SLOT)
    if slot >= own:
        return (True, False, 0, fullest, node.node_id)
    return (True, True, -slot, fullest, node.node_id)


def _decisions(plan: Plan) -> set[tuple[str, str | None, bool]]:
    return {(p.attempt.task_id, p.node_id, True) for p in plan.placed} | {
        (w.attempt.task_id, None, w.for_capacity) for w in plan.waiting
    }


# Capacities and amounts in powers of two, so shares are exact binary fractions
# and ties compare equal however the sums are grouped.
_CPU = st.sampled_from([0, 256, 512, 1024, 2048])
_MEM = st.sampled_from([0, 256, 512, 1024, 2048])
_RUNS_FOR = st.sampled_from([0.0, 100.0, 400.0, 1000.0, 4000.0])
_EXPECTED = st.sampled_from([None, 60.0, 700.0, 3000.0])


@st.composite
def _rounds(
    draw: st.DrawFn,
) -> tuple[list[Node], list[Attempt], dict[str, QueuePolicy], dict[str, QueueUse]]:
    shapes = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1024, 2048, 4096]),
                st.sampled_from([1024, 4096]),
                st.sampled_from([0, 1, 2]),
            ),
            min_size=1,
            max_size=3,
        )
    )
    nodes = []
    for i in range(draw(st.integers(0, 12))):
        cap = Resources(*draw(st.sampled_from(shapes)))
        used = Resources(
            draw(st.sampled_from([0, cap.cpu_millis // 4, cap.cpu_millis // 2])),
            draw(st.sampled_from([0, cap.memory_bytes // 2])),
            0,
        )
        warm = draw(st.frozensets(st.sampled_from(["x", "y"]), max_size=1))
        runs_for = draw(_RUNS_FOR) if used else 0.0
        nodes.append(Node(f"n{i:02d}", cap, reserved=used, warm_bundles=warm, runs_for=runs_for))
    # Some rounds without any expected run time (one lifetime slot for every node).
    expected = draw(st.sampled_from([st.none(), _EXPECTED]))
    attempts = []
    for i in range(draw(st.integers(1, 30))):
        limits = Resources(draw(_CPU), draw(_MEM), draw(st.sampled_from([0, 0, 1])))
        attempts.append(
            Attempt(
                run_id="r",
                task_id=f"t{i:02d}",
                attempt=1,
                limits=limits,
                priority=draw(st.integers(0, 2)),
                queue=draw(st.sampled_from(["a", "b", "c"])),
                bundle_sha256=draw(st.sampled_from(["", "x", "y"])),
                sequence=draw(st.integers(0, 1000)) * 100 + i,
                user=draw(st.sampled_from(["u", "v"])),
                expected_seconds=draw(expected),
            )
        )
    queues = {
        "a": QueuePolicy("a", weight=draw(st.sampled_from([1.0, 2.0, 4.0]))),
        "b": QueuePolicy(
            "b",
            quota=Quota(cpu_millis=draw(st.sampled_from([None, 1024, 4096]))),
            max_running_per_user=draw(st.integers(0, 3)),
        ),
    }
    use = {"a": QueueUse(reserved=Resources(1024, 1024, 0), running_by_user={"u": 1})}
    return nodes, attempts, queues, use


@settings(max_examples=300, deadline=None)
@given(_rounds())
def test_the_indexed_placement_decides_as_a_scan_of_every_node_would(
    round_: tuple[list[Node], list[Attempt], dict[str, QueuePolicy], dict[str, QueueUse]],
) -> None:
    nodes, attempts, queues, use = round_
    plan = place(nodes, attempts, queues, use)
    expected = _reference(nodes, attempts, queues, use)
    assert _decisions(plan) == set(expected)
    assert [p.attempt.task_id for p in plan.placed] == [t for t, n, _ in expected if n]


def test_twenty_thousand_attempts_onto_five_thousand_nodes_are_all_valid() -> None:
    pick = random.Random(12)
    shapes = [_res(2, 8), _res(8, 32), _res(4, 16, gpus=1)]
    nodes = [
        Node(f"n{i:04d}", shapes[i % 3], warm_bundles=frozenset({f"b{i % 7}"})) for i in range(5000)
    ]
    sizes = [_res(0.5, 1), _res(1, 2), _res(2, 4), _res(3, 12, gpus=1)]
    queues = {"a": QueuePolicy("a", weight=1), "b": QueuePolicy("b", weight=3)}
    attempts = [
        _attempt(
            f"t{i}",
            pick.choice(sizes),
            priority=pick.choice([0, 0, 1]),
            sequence=i,
            bundle_sha256=f"b{pick.randrange(10)}",
            queue=pick.choice(["a", "b"]),
        )
        for i in range(20_000)
    ]
    plan = place(nodes, attempts, queues)
    assert len(plan.placed) + len(plan.waiting) == 20_000
    assert len(plan.placed) > 10_000

    capacity = {n.node_id: n.capacity for n in nodes}
    reserved: dict[str, Resources] = defaultdict(Resources)
    for p in plan.placed:
        reserved[p.node_id] = reserved[p.node_id] + p.attempt.need
    assert all(reserved[i].fits_in(capacity[i]) for i in reserved)

    # Room only shrinks in a round: an attempt that waited for room was never
    # followed, in its queue, by a placed one needing at least as much.
    placed_ids = {p.attempt.task_id for p in plan.placed}
    for queue in ("a", "b"):
        line = queue_order(a for a in attempts if a.queue == queue)
        placed = [p.attempt.task_id for p in plan.placed if p.attempt.queue == queue]
        assert placed == [a.task_id for a in line if a.task_id in placed_ids]
        placed_later: set[Resources] = set()
        for a in reversed(line):
            if a.task_id in placed_ids:
                placed_later.add(a.need)
            else:
                assert not any(a.need.fits_in(later) for later in placed_later)
