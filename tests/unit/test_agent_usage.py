"""A running attempt's usage reports: one per interval, with the CPU used since the last."""

from __future__ import annotations

from strata.agent.domain.usage import HeldMemory, Sample, cpu_millis, due


def test_a_sample_is_reported_once_a_whole_interval_passed_since_the_last() -> None:
    last = Sample(at=10.0, rss_bytes=0, cpu_seconds=0.0)
    assert not due(last, Sample(14.9, 100, 1.0), interval=5)
    assert due(last, Sample(15.0, 100, 1.0), interval=5)


def test_cpu_is_the_average_since_the_last_report_in_millicores() -> None:
    last = Sample(at=10.0, rss_bytes=0, cpu_seconds=2.0)
    assert cpu_millis(last, Sample(15.0, 0, 4.5)) == 500
    assert cpu_millis(last, Sample(10.0, 0, 9.0)) == 0


def test_held_memory_weighs_each_sample_by_how_long_it_held() -> None:
    # 1 GiB for 9 s, then 4 GiB for 1 s: a brief peak barely moves the mean.
    held = HeldMemory()
    for at, rss in ((0.0, 1024), (9.0, 4096), (10.0, 4096)):
        held = held.add(Sample(at, rss, 0.0))

    assert held.mean_bytes == round((1024 * 9 + 4096 * 1) / 10)


def test_held_memory_of_one_sample_is_that_sample_and_of_none_is_not_measured() -> None:
    assert HeldMemory().mean_bytes == 0
    assert HeldMemory().add(Sample(3.0, 500, 0.0)).mean_bytes == 500
