"""The scheduler's injectable clock: a file's time in tests, refused in production; and
its other setting, how long WatchRun's changes of a finished run are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strata.core.errors import ConfigError
from strata.core.settings import load
from strata.scheduler.clock import SchedulerSettings, clock_of


def test_without_a_clock_file_the_clock_is_the_real_time() -> None:
    before = datetime.now(UTC)
    now = clock_of(SchedulerSettings(clock_file=None), mode="production")()
    assert before <= now <= datetime.now(UTC)


def test_a_clock_file_gives_its_time_at_every_call(tmp_path: Path) -> None:
    path = tmp_path / "now"
    path.write_text("2026-01-01T03:00:00+00:00\n")
    clock = clock_of(SchedulerSettings(clock_file=path), mode="development")
    assert clock() == datetime(2026, 1, 1, 3, tzinfo=UTC)
    path.write_text("2026-01-01T05:30:00+01:00")
    assert clock() == datetime(2026, 1, 1, 4, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("tomorrow", "expected an ISO 8601 time"), ("2026-01-01T03:00:00", "has no offset")],
)
def test_a_clock_file_that_is_not_an_aware_time_is_refused_naming_it(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "now"
    path.write_text(text)
    clock = clock_of(SchedulerSettings(clock_file=path), mode="development")
    with pytest.raises(ConfigError, match=expected) as refused:
        clock()
    assert str(path) in str(refused.value)


def test_a_clock_file_is_refused_in_production(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STRATA_SCHEDULER_CLOCK_FILE is for tests"):
        clock_of(SchedulerSettings(clock_file=tmp_path / "now"), mode="production")


def test_changes_retention_is_a_day_unless_set_as_an_iso_8601_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STRATA_SCHEDULER_CHANGES_RETENTION", raising=False)
    assert load(SchedulerSettings).changes_retention == timedelta(days=1)
    monkeypatch.setenv("STRATA_SCHEDULER_CHANGES_RETENTION", "PT30S")
    assert load(SchedulerSettings).changes_retention == timedelta(seconds=30)


@pytest.mark.parametrize(("value", "expected"), [("PT0S", "greater than 0"), ("soon", "timedelta")])
def test_a_changes_retention_that_is_not_a_positive_duration_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("STRATA_SCHEDULER_CHANGES_RETENTION", value)
    with pytest.raises(ConfigError, match=expected) as refused:
        load(SchedulerSettings)
    assert "STRATA_SCHEDULER_CHANGES_RETENTION" in str(refused.value)
