"""Node memory pressure as a pure decision: nothing while the node's attempts fit the
memory it offers them; past it, the attempt furthest above its reservation, the newest
between equals, never one within its reservation, and one attempt per overrun (one
already stopping counts as freed)."""

from __future__ import annotations

from strata.agent.domain.pressure import MIB, Held, eviction

NODE = 1000 * MIB


def held(name: str, rss_mib: int, reserved_mib: int, started: int, **kw: bool) -> Held:
    return Held(("run", name, 1), rss_mib * MIB, reserved_mib * MIB, started, **kw)


def test_attempts_within_what_the_node_offers_are_left_alone() -> None:
    assert eviction(NODE, [held("a", 600, 200, 1), held("b", 400, 300, 2)]) is None


def test_past_it_the_attempt_furthest_above_its_reservation_is_evicted() -> None:
    # b holds less than a but is further above what placement reserved for it.
    attempts = [held("a", 520, 500, 1), held("b", 450, 100, 2), held("c", 31, 0, 3)]
    chosen = eviction(NODE, attempts)
    assert chosen is not None
    assert chosen.key == ("run", "b", 1)
    assert chosen.message == (
        "node memory pressure: its attempts held 1001 MiB, more than the 1000 MiB it offers; "
        "this one held 450 MiB, 350 MiB above its reservation of 100 MiB, the most; retried "
        "without spending a retry"
    )


def test_between_attempts_equally_far_above_the_newest_is_evicted() -> None:
    attempts = [held("old", 600, 300, 1), held("new", 500, 200, 7), held("mid", 500, 200, 4)]
    chosen = eviction(NODE, attempts)
    assert chosen is not None
    assert chosen.key == ("run", "new", 1)


def test_an_attempt_already_stopping_counts_as_freed_so_one_overrun_evicts_one() -> None:
    stopping = held("b", 450, 100, 2, stopping=True)
    assert eviction(NODE, [held("a", 600, 500, 1), stopping]) is None
    # Still over without it: the next one goes, never the one already stopping.
    chosen = eviction(NODE, [held("a", 1010, 500, 1), stopping])
    assert chosen is not None
    assert chosen.key == ("run", "a", 1)


def test_attempts_within_their_reservations_are_never_evicted() -> None:
    # Past the node's memory, but no attempt beyond what placement reserved for it.
    assert eviction(NODE, [held("a", 520, 520, 1), held("b", 500, 500, 2)]) is None
    # One above its reservation, even by little, is the one evicted.
    chosen = eviction(NODE, [held("a", 520, 520, 1), held("b", 500, 490, 2)])
    assert chosen is not None
    assert chosen.key == ("run", "b", 1)


def test_no_attempts_nothing_to_evict() -> None:
    assert eviction(NODE, []) is None
