"""The simulated week of bench/placement: what each way of placing reserves, and the
eviction it relies on when reservations are below what attempts use."""

from __future__ import annotations

from bench.placement.simulation import Fleet, simulate
from bench.placement.trace import Run, TaskKind, Trace
from strata.provisioner.domain.resources import GIB, Resources

PEAKY = TaskKind(
    name="peaky",
    shape="peaky",
    request=Resources(cpu_millis=4_000, memory_bytes=16 * GIB),
    baseline=0.25,
    peak=0.95,
    peak_share=0.1,
    cpu=0.5,
    minutes=30,
)
ONE_NODE = Fleet(min_nodes=1, max_nodes=1)


def _run(index: int, at: float, peak_from: float = 1_500.0) -> Run:
    """30 minutes at 4 GiB, 3 of them at 15.2 GiB starting ``peak_from`` seconds in."""
    return Run(
        index=index,
        kind=PEAKY,
        arrives_at=at,
        seconds=1_800.0,
        baseline_bytes=4 * GIB,
        peak_bytes=int(15.2 * GIB),
        peak_from=peak_from,
        peak_seconds=180.0,
        cpu_millis=2_000,
    )


def _trace(runs: list[Run]) -> Trace:
    return Trace(seed=0, days=1.0, kinds=(PEAKY,), runs=tuple(runs))


def test_reserving_means_holds_less_for_a_briefly_peaking_task_than_reserving_peaks() -> None:
    # One run at a time: 3 to learn from, then 3 sized from them.
    trace = _trace([_run(i, i * 3_600.0) for i in range(6)])

    peaks, means = simulate(trace, "peak", ONE_NODE), simulate(trace, "mean", ONE_NODE)

    assert peaks.finished == means.finished == 6
    assert peaks.evicted == means.evicted == 0
    learned = 3 * 1_800.0  # seconds of the 3 runs sized from history
    # Peaks: p95 peak + 15 % is above the request, so the request (16 GiB) is reserved.
    assert peaks.reserved_memory_seconds == 6 * 1_800.0 * 16 * GIB
    # Means: about 5.1 GiB held on average, + 15 %: under 6 GiB for the last three.
    assert means.reserved_memory_seconds < (3 * 1_800.0 * 16 + learned * 6) * GIB


def test_a_node_whose_attempts_peak_together_evicts_the_one_furthest_above_its_reserve() -> None:
    # 3 runs to learn from, then 5 at once on the one 64-GiB node (about 6 GiB reserved
    # each): 4 of them peak at the same moment (4 x 15.2 + 4 > 64 GiB), one later.
    learn = [_run(i, i * 3_600.0) for i in range(3)]
    together = [_run(3 + i, 4 * 3_600.0, peak_from=900.0) for i in range(4)]
    apart = [_run(7, 4 * 3_600.0, peak_from=100.0)]

    outcome = simulate(_trace(learn + together + apart), "mean", ONE_NODE)

    assert outcome.evicted >= 1
    assert outcome.out_of_memory == 0
    assert outcome.finished == 8  # the evicted attempt is retried and finishes
    assert outcome.attempts == 8 + outcome.evicted
