"""The scheduler's notion of now: the real clock, or a file a test writes.

Cron ticks, retry backoffs and run times all read :func:`clock_of`'s clock. With
``STRATA_SCHEDULER_CLOCK_FILE`` set, now is the ISO 8601 time written in that
file, read at every call, so a test moves a running scheduler across a day of cron
ticks by rewriting one line instead of waiting. Production leaves it unset.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from strata.core.errors import ConfigError
from strata.core.settings import Mode, ModeSettings, load
from strata.scheduler.domain.runs import MAX_EVICTIONS, MAX_LOSSES

Clock = Callable[[], datetime]


class SchedulerSettings(BaseSettings):
    """Settings only the scheduler reads."""

    model_config = SettingsConfigDict(env_prefix="STRATA_SCHEDULER_", extra="ignore", frozen=True)

    clock_file: Path | None = Field(
        None, description="File holding the time the scheduler takes as now (tests only)."
    )
    changes_retention: timedelta = Field(
        timedelta(days=1),
        gt=timedelta(0),
        description="How long WatchRun's changes of a finished run are kept, as an ISO 8601 "
        "duration (P1D, PT30S); the run and its tasks stay.",
    )
    max_evictions: int = Field(
        MAX_EVICTIONS,
        ge=0,
        description="Attempts of one task run that may be evicted for node memory pressure "
        "and retried without spending a retry; the eviction after fails the task.",
    )
    max_losses: int = Field(
        MAX_LOSSES,
        ge=0,
        description="Attempts of one task run that may be lost with their node (agent gone, "
        "pod deleted) and retried without spending a retry; the loss after fails the task.",
    )


def clock_of(settings: SchedulerSettings | None = None, mode: Mode | None = None) -> Clock:
    """The clock ``settings`` name: the file's time when one is set, the real time otherwise.

    A clock file in production is refused: a scheduler whose time stands still
    would never run a cron tick or a retry again.
    """
    path = (settings or load(SchedulerSettings)).clock_file
    if path is None:
        return lambda: datetime.now(UTC)
    if (mode or load(ModeSettings).mode) == "production":
        raise ConfigError(
            "STRATA_SCHEDULER_CLOCK_FILE is for tests and development: unset it, or set "
            "STRATA_MODE=development"
        )
    return lambda: read_clock(path)


def read_clock(path: Path) -> datetime:
    """The time written in ``path``; ConfigError naming the file when it is not one."""
    text = path.read_text().strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"STRATA_SCHEDULER_CLOCK_FILE {path}: expected an ISO 8601 time with its offset, "
            f"got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ConfigError(
            f"STRATA_SCHEDULER_CLOCK_FILE {path}: {text!r} has no offset; write e.g. "
            "'2026-01-01T03:00:00+00:00'"
        )
    return moment
