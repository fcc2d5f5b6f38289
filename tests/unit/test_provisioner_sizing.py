"""Sizing an attempt from its task's past attempts (strata.provisioner.domain.sizing)."""

from __future__ import annotations

import pytest

from strata.provisioner.domain.resources import Resources
from strata.provisioner.domain.sizing import PastAttempt, SizingPolicy, size_attempt

GIB = 2**30
MIB = 2**20
ASKED = Resources(cpu_millis=2000, memory_bytes=4 * GIB)
LARGEST = 32 * GIB


def _ran(
    peak_mib: int, cpu_millis: int = 500, limit: int = 4 * GIB, mean_mib: int = 0
) -> PastAttempt:
    return PastAttempt(
        peak_mib * MIB, cpu_millis, limit, out_of_memory=False, mean_memory_bytes=mean_mib * MIB
    )


def _oom(limit: int) -> PastAttempt:
    return PastAttempt(limit, 100, limit, out_of_memory=True)


def test_without_enough_history_the_request_is_reserved() -> None:
    sizing = size_attempt(ASKED, [_ran(1000), _ran(1100)], LARGEST)

    assert sizing.limits == ASKED
    assert sizing.reserve == ASKED
    assert "fewer than 3" in sizing.reason


def test_the_reserve_is_the_high_quantile_of_past_peaks_plus_the_margin() -> None:
    history = [_ran(mib, cpu_millis=400) for mib in (900, 1000, 1200, 1100)]

    sizing = size_attempt(ASKED, history, LARGEST)

    assert sizing.limits == ASKED  # the request stays the hard limit
    assert sizing.reserve.memory_bytes == round(1200 * MIB * 1.15)
    assert sizing.reserve.cpu_millis == 460
    assert "p95 peak memory 1.172 GiB, 0.4 CPU" in sizing.reason


def test_the_reserve_never_exceeds_the_request() -> None:
    history = [_ran(4000, cpu_millis=1900) for _ in range(5)]

    sizing = size_attempt(ASKED, history, LARGEST)

    assert sizing.reserve == ASKED


def test_an_out_of_memory_attempt_doubles_the_limit_and_reserves_all_of_it() -> None:
    sizing = size_attempt(ASKED, [_oom(4 * GIB), _ran(1000), _ran(1000), _ran(1000)], LARGEST)

    assert sizing.limits == Resources(2000, 8 * GIB)
    assert sizing.reserve == sizing.limits
    assert "ran out of memory at 4" in sizing.reason


def test_the_raised_limit_stops_at_the_largest_node() -> None:
    sizing = size_attempt(ASKED, [_oom(24 * GIB)], LARGEST)

    assert sizing.limits.memory_bytes == LARGEST


def test_the_next_run_starts_from_the_limit_that_last_succeeded() -> None:
    raised = 8 * GIB
    history = [_ran(5000, limit=raised), _oom(4 * GIB)]

    sizing = size_attempt(ASKED, history, LARGEST)

    assert sizing.limits.memory_bytes == raised
    assert "raised after running out of memory" in sizing.reason


def test_a_request_larger_than_every_node_is_left_for_placement_to_refuse() -> None:
    huge = Resources(cpu_millis=1000, memory_bytes=64 * GIB)

    assert size_attempt(huge, [], LARGEST).limits == huge


MEANS = SizingPolicy(memory_from="mean")
PEAKS = SizingPolicy(memory_from="peak")


def test_reserving_means_sizes_a_briefly_peaking_task_by_what_it_usually_holds() -> None:
    # Peaks near the whole request for a moment, holds about 1.5 GiB otherwise.
    history = [_ran(3900, mean_mib=mib) for mib in (1400, 1500, 1600, 1450)]

    by_mean = size_attempt(ASKED, history, LARGEST)
    by_peak = size_attempt(ASKED, history, LARGEST, PEAKS)

    assert by_mean.reserve.memory_bytes == round(1600 * MIB * 1.15)
    assert "p95 mean memory" in by_mean.reason
    assert by_peak.reserve.memory_bytes == ASKED.memory_bytes
    assert by_mean.limits == by_peak.limits == ASKED  # the request stays the hard limit
    assert size_attempt(ASKED, history, LARGEST, MEANS) == by_mean  # means are the default


def test_reserving_means_falls_back_to_peaks_while_few_attempts_measured_a_mean() -> None:
    # Older agents report no mean (0): the peaks are all there is to go on.
    history = [_ran(1200, mean_mib=500), _ran(1000), _ran(1100), _ran(900)]

    sizing = size_attempt(ASKED, history, LARGEST, MEANS)

    assert sizing.reserve.memory_bytes == round(1200 * MIB * 1.15)
    assert "p95 peak memory" in sizing.reason


def test_a_run_once_evicted_reserves_peaks_for_its_next_attempts_and_other_runs_means() -> None:
    # The run's first attempt held 2.5 GiB when its node evicted it, on its way to a
    # peak like the task's others: its retry reserves that peak, not the mean again.
    evicted = PastAttempt(
        2500 * MIB,
        500,
        4 * GIB,
        out_of_memory=False,
        mean_memory_bytes=1500 * MIB,
        evicted=True,
        run_id="run-7",
    )
    history = [evicted] + [_ran(3000, mean_mib=mib) for mib in (1400, 1500, 1450)]

    retry = size_attempt(ASKED, history, LARGEST, MEANS, run_id="run-7")
    other = size_attempt(ASKED, history, LARGEST, MEANS, run_id="run-8")

    assert retry.reserve.memory_bytes == round(3000 * MIB * 1.15)
    assert "p95 peak memory" in retry.reason
    assert "an attempt of this run was evicted" in retry.reason
    assert other.reserve.memory_bytes == round(1500 * MIB * 1.15)
    assert retry.limits == other.limits == ASKED  # an eviction does not raise the limit


def _timed(seconds: float, *, out_of_memory: bool = False, evicted: bool = False) -> PastAttempt:
    return PastAttempt(
        1000 * MIB, 500, 4 * GIB, out_of_memory, evicted=evicted, run_seconds=seconds
    )


def test_the_expected_run_time_is_the_median_of_attempts_that_ran_to_their_end() -> None:
    history = [
        _timed(30, out_of_memory=True),  # killed early: says nothing of how long it runs
        _timed(45, evicted=True),
        _timed(600),
        _timed(900),
        _timed(0),  # not known
        _timed(700),
        _timed(5000),
    ]

    assert size_attempt(ASKED, history, LARGEST).expected_seconds == 800


def test_too_few_known_run_times_give_no_expectation() -> None:
    history = [_timed(600), _timed(700), _timed(0), _timed(0)]

    assert size_attempt(ASKED, history, LARGEST).expected_seconds is None


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"quantile": 0}, "quantile"),
        ({"margin": -0.1}, "margin"),
        ({"min_samples": 0}, "min_samples"),
        ({"oom_growth": 1.0}, "oom_growth"),
        ({"memory_from": "median"}, "memory_from"),
    ],
)
def test_a_nonsense_policy_is_refused_naming_the_field(
    policy: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        SizingPolicy(**policy)  # type: ignore[arg-type]
