"""The swap figures of ``bench.serving``: which calls count as during the swap, and what
counts against it. Pure: calls are made up, times in seconds."""

from __future__ import annotations

import pytest

from bench.serving.client import Calls
from bench.serving.plan import FULL, Plan
from bench.serving.swap import summarize


def _calls(*answers: tuple[float, float, str], failures: int = 0) -> Calls:
    calls = Calls()
    for started, seconds, version in answers:
        calls.started.append(started)
        calls.seconds.append(seconds)
        calls.versions.append(version)
    calls.failures.extend((0.0, "UNAVAILABLE: gone") for _ in range(failures))
    return calls


def test_during_the_swap_runs_from_the_promotion_to_the_last_answer_from_version_1() -> None:
    calls = _calls(
        (0.1, 0.001, "1"),  # warm-up: neither baseline nor swap
        (0.6, 0.002, "1"),  # baseline
        (0.7, 0.004, "1"),  # baseline
        (1.0, 0.010, "1"),  # during: starts at the promotion
        (1.2, 0.300, "1"),  # during: the last answer from version 1 comes back at 1.5
        (1.3, 0.020, "2"),  # during: the first answer from version 2 comes back at 1.32
        (1.45, 0.030, "2"),  # during: starts before 1.5
        (1.6, 0.001, "2"),  # after
        (1.7, 0.001, "2"),  # after
    )

    swap = summarize(calls, started=0.0, promoted=1.0, first_new=1.32)

    assert (swap.baseline.count, swap.during.count) == (2, 4)
    assert swap.during.max == pytest.approx(300.0)
    assert swap.promote_to_new_ms == pytest.approx(320.0)
    assert (swap.calls, swap.failed, swap.first_failure) == (9, 0, "")
    assert swap.old_after_new == 0


def test_failed_calls_and_late_answers_from_the_old_version_are_counted() -> None:
    calls = _calls(
        (0.6, 0.001, "1"),
        (0.7, 0.001, "1"),
        (1.1, 0.001, "2"),
        (1.2, 0.001, "1"),
        (1.3, 0.001, "2"),
        failures=2,
    )

    swap = summarize(calls, started=0.0, promoted=1.0, first_new=1.101)

    assert (swap.calls, swap.failed, swap.first_failure) == (7, 2, "UNAVAILABLE: gone")
    assert swap.old_after_new == 1


def test_a_plan_leaves_the_swap_a_baseline_after_its_warm_up() -> None:
    with pytest.raises(ValueError, match=r"plan\.swap_steady_seconds must be over 1 s"):
        Plan(**{**vars(FULL), "swap_steady_seconds": 0.5})
