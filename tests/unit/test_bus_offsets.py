"""When the Bus commits offsets, and which: only settled ones, batched, never lost."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from strata.core.bus.offsets import Offsets

A = TopicPartition("strata.tasks.events", 0)
B = TopicPartition("strata.tasks.events", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def offsets(clock: Clock) -> Offsets:
    return Offsets(every=10, interval=0.5, clock=clock)


def test_nothing_is_due_before_anything_settled(offsets: Offsets) -> None:
    assert not offsets.due()
    assert offsets.wait() is None
    assert offsets.take() == {}


def test_a_commit_falls_due_after_enough_records(offsets: Offsets) -> None:
    offsets.settle(A, 5, records=5)
    assert not offsets.due()

    offsets.settle(A, 10, records=5)
    assert offsets.due()
    assert offsets.take() == {A: 10}


def test_a_commit_falls_due_after_the_interval(offsets: Offsets, clock: Clock) -> None:
    offsets.settle(A, 1)
    clock.now += 0.2
    assert not offsets.due()
    assert offsets.wait() == pytest.approx(0.3)

    clock.now += 0.3
    assert offsets.due()
    assert offsets.take() == {A: 1}
    assert not offsets.due()


def test_only_offsets_past_the_last_commit_are_taken(offsets: Offsets) -> None:
    offsets.settle(A, 3)
    offsets.settle(B, 7)
    offsets.committed(offsets.take())

    offsets.settle(B, 9)
    assert offsets.take() == {B: 9}


def test_settled_offsets_never_go_back(offsets: Offsets) -> None:
    offsets.settle(A, 8)
    offsets.settle(A, 4)
    assert offsets.take() == {A: 8}


def test_a_failed_commit_is_carried_by_the_next(offsets: Offsets, clock: Clock) -> None:
    offsets.settle(A, 3)
    assert offsets.take() == {A: 3}
    offsets.failed()
    assert not offsets.due()

    clock.now += 0.5
    assert offsets.due()
    assert offsets.take() == {A: 3}


def test_partitions_can_be_taken_on_their_own(offsets: Offsets) -> None:
    offsets.settle(A, 3)
    offsets.settle(B, 4)
    assert offsets.take([B]) == {B: 4}
    assert offsets.pending()


def test_forgotten_partitions_are_never_committed(offsets: Offsets) -> None:
    offsets.settle(A, 3)
    offsets.settle(B, 4)
    offsets.forget([A])
    assert offsets.take() == {B: 4}


def test_bad_limits_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="every must be at least 1"):
        Offsets(every=0, interval=1.0)
    with pytest.raises(ValueError, match="interval must be positive"):
        Offsets(every=1, interval=0.0)
