"""Node memory pressure as a pure decision: nothing while the node's attempts fit its
memory less the margin; past it, the attempt furthest above its reservation, the newest
between equals, and one attempt per overrun (one already stopping counts as freed)."""

from __future__ import annotations

from strata.agent.domain.pressure import MIB, Held, eviction, threshold

NODE = 1000 * MIB


def held(name: str, rss_mib: int, reserved_mib: int, started: int, **kw: bool) -> Held:
    return Held(("run", name, 1), rss_mib * MIB, reserved_mib * MIB, started, **kw)


def test_attempts_within_the_node_less_its_margin_are_left_alone() -> None:
    attempts = [held("a", 500, 200, 1), held("b", 450, 400, 2)]
    assert threshold(NODE, 0.05) == 950 * MIB
    assert eviction(NODE, 0.05, attempts) is None


def test_past_it_the_attempt_furthest_above_its_reservation_is_evicted() -> None:
    # b holds less than a but is further above what placement reserved for it.
    attempts = [held("a", 520, 500, 1), held("b", 450, 100, 2), held("c", 30, 0, 3)]
    chosen = eviction(NODE, 0.05, attempts)
    assert chosen is not None
    assert chosen.key == ("run", "b", 1)
    assert chosen.message == (
        "node memory pressure: its attempts held 1000 MiB, more than the 950 MiB they may "
        "(5% of 1000 MiB kept free); this one held 450 MiB, 350 MiB above its reservation "
        "of 100 MiB, the most; retried without spending a retry"
    )


def test_the_margin_decides_when_pressure_starts() -> None:
    attempts = [held("a", 500, 200, 1), held("b", 460, 400, 2)]
    assert eviction(NODE, 0.0, attempts) is None
    chosen = eviction(NODE, 0.05, attempts)
    assert chosen is not None
    assert chosen.key == ("run", "a", 1)


def test_between_attempts_equally_far_above_the_newest_is_evicted() -> None:
    attempts = [held("old", 600, 300, 1), held("new", 500, 200, 7), held("mid", 500, 200, 4)]
    chosen = eviction(NODE, 0.05, attempts)
    assert chosen is not None
    assert chosen.key == ("run", "new", 1)


def test_an_attempt_already_stopping_counts_as_freed_so_one_overrun_evicts_one() -> None:
    stopping = held("b", 450, 100, 2, stopping=True)
    assert eviction(NODE, 0.05, [held("a", 520, 500, 1), stopping]) is None
    # Still over without it: the next one goes, never the one already stopping.
    chosen = eviction(NODE, 0.05, [held("a", 990, 500, 1), stopping])
    assert chosen is not None
    assert chosen.key == ("run", "a", 1)


def test_attempts_within_their_reservations_are_never_evicted() -> None:
    # Past the margin, but placement reserved all of it: nothing is over-committed.
    attempts = [held("a", 500, 500, 1), held("b", 480, 500, 2)]
    assert eviction(NODE, 0.05, attempts) is None
    # One above its reservation, even by little, is the one evicted.
    chosen = eviction(NODE, 0.05, [held("a", 500, 500, 1), held("b", 480, 470, 2)])
    assert chosen is not None
    assert chosen.key == ("run", "b", 1)


def test_no_attempts_nothing_to_evict() -> None:
    assert eviction(NODE, 0.05, []) is None
