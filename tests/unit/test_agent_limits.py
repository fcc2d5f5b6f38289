"""An attempt's limits as a pure decision: memory first, then time; none when unset."""

from __future__ import annotations

from strata.agent.domain.limits import MIB, Limits, breach
from strata.agent.domain.outcome import StopKind


def test_within_its_limits_an_attempt_runs_on() -> None:
    assert breach(Limits(256 * MIB, 10), rss_bytes=256 * MIB, elapsed_seconds=10) is None


def test_past_its_memory_limit_an_attempt_is_out_of_memory_and_killed_at_once() -> None:
    over = breach(Limits(256 * MIB, 10), rss_bytes=300 * MIB, elapsed_seconds=1)
    assert over is not None
    assert over.kind is StopKind.OUT_OF_MEMORY
    assert over.message == "out of memory: used 300 MiB, over its limit of 256 MiB"
    assert over.grace == 0


def test_past_its_timeout_an_attempt_times_out_with_a_grace_to_clean_up() -> None:
    over = breach(Limits(256 * MIB, 10), rss_bytes=MIB, elapsed_seconds=10.5)
    assert over is not None
    assert over.kind is StopKind.TIMEOUT
    assert over.message == "timed out: ran 10.5s, past its timeout of 10s"
    assert over.grace > 0


def test_unset_limits_never_stop_an_attempt() -> None:
    assert breach(Limits(), rss_bytes=10**12, elapsed_seconds=10**6) is None
