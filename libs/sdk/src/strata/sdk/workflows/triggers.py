"""What starts a run besides a person: a cron schedule or a dataset's new partition.

Cron expressions are checked with cronsim (the parser Healthchecks.io runs its
schedules on), time zones with the standard library's zoneinfo, so a typo fails
when the workflow is declared rather than when the first tick never comes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from strata.api.scheduler.v1.scheduler_pb2 import CronTrigger, DataArrivalTrigger, Trigger
from strata.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class Cron:
    """A run at each tick of a five-field cron ``expression`` read in ``time_zone``.

    ``catch_up``: ticks missed while the scheduler was down run afterwards, each of
    them; otherwise only the latest missed tick does.
    """

    expression: str
    time_zone: str = "UTC"
    catch_up: bool = False

    def to_proto(self, field: str) -> Trigger:
        check_cron(self.expression, self.time_zone, field)
        return Trigger(
            cron=CronTrigger(
                expression=self.expression, time_zone=self.time_zone, catch_up=self.catch_up
            )
        )


@dataclass(frozen=True)
class DataArrival:
    """A run for each new partition of ``dataset`` matching ``partition_glob`` (empty: any)."""

    dataset: str
    partition_glob: str = ""

    def to_proto(self, field: str) -> Trigger:
        if not self.dataset:
            raise InvalidArgumentError(f"{field}.dataset", "must name the dataset to watch")
        return Trigger(
            data_arrival=DataArrivalTrigger(
                dataset=self.dataset, partition_glob=self.partition_glob
            )
        )


def check_cron(expression: str, time_zone: str, field: str) -> None:
    """Raise InvalidArgumentError unless ``expression`` is a five-field cron expression
    and ``time_zone`` an IANA zone (empty means UTC)."""
    zone = UTC if not time_zone else _zone(time_zone, f"{field}.time_zone")
    if len(expression.split()) != 5:
        raise InvalidArgumentError(
            f"{field}.expression",
            f"expected five fields (minute hour day month weekday), got {expression!r}",
        )
    try:
        CronSim(expression, datetime.now(zone))
    except CronSimError as error:
        raise InvalidArgumentError(f"{field}.expression", f"{error} in {expression!r}") from None


def _zone(name: str, field: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(
            field, f"expected an IANA time zone like 'Europe/Paris', got {name!r}"
        ) from None
