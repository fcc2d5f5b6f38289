"""Which triggers fire: data-arrival matching, cron ticks, what a backfill covers, and
the lanes that bound how many runs are active at once. No I/O.

A data-arrival trigger matches an arrived partition when the dataset is the one it
watches and the partition matches its glob (shell-style, ``date=2024-*``; empty
matches any). A cron schedule's due ticks are read in its time zone (cronsim, with
Debian cron's handling of daylight-saving gaps and repeats). A run is admitted to
its lane while fewer than the lane's limit of runs are active; the others wait
QUEUED.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo

from cronsim import CronSim

from strata.api.scheduler.v1.scheduler_pb2 import CronTrigger, DataArrivalTrigger, WorkflowSpec
from strata.core.errors import InvalidArgumentError

MAX_TICKS_PER_ROUND = 100
"""Most ticks of one schedule run in one round; the rest come in the next rounds, so a
long outage of an every-minute schedule catches up in steps instead of one huge
transaction."""
MAX_BACKFILL_TICKS = 1000
"""Most ticks (or partitions) one backfill may cover."""


def watches(trigger: DataArrivalTrigger, dataset: str, partition: str) -> bool:
    """Whether ``trigger`` fires for ``partition`` of ``dataset``."""
    if trigger.dataset != dataset:
        return False
    return not trigger.partition_glob or fnmatchcase(partition, trigger.partition_glob)


def watching(spec: WorkflowSpec, dataset: str, partition: str) -> bool:
    """Whether any data-arrival trigger of ``spec`` fires for the partition."""
    return any(
        t.WhichOneof("kind") == "data_arrival" and watches(t.data_arrival, dataset, partition)
        for t in spec.triggers
    )


def cron_triggers(spec: WorkflowSpec) -> list[CronTrigger]:
    return [t.cron for t in spec.triggers if t.WhichOneof("kind") == "cron"]


def ticks_between(
    trigger: CronTrigger, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The ticks of ``trigger`` in (``after``, ``until``], oldest first, at most ``limit``."""
    zone = ZoneInfo(trigger.time_zone) if trigger.time_zone else UTC
    found: list[datetime] = []
    for tick in CronSim(trigger.expression, after.astimezone(zone)):
        if tick > until or len(found) == limit:
            break
        found.append(tick.astimezone(UTC))
    return found


def due_ticks(
    trigger: CronTrigger, last: datetime, now: datetime
) -> tuple[list[datetime], datetime]:
    """The ticks to run now and the schedule's new last tick.

    With ``catch_up`` every tick since ``last`` runs (at most
    :data:`MAX_TICKS_PER_ROUND` per round; the last tick advances only past those);
    without it only the latest one does, and the ones before it are passed over.
    """
    if trigger.catch_up:
        ticks = ticks_between(trigger, last, now, MAX_TICKS_PER_ROUND)
        return ticks, ticks[-1] if ticks else last
    latest = latest_tick(trigger, last, now)
    return ([latest], latest) if latest is not None else ([], last)


def latest_tick(trigger: CronTrigger, last: datetime, now: datetime) -> datetime | None:
    """The latest tick at or before ``now`` if it is after ``last``, else None."""
    zone = ZoneInfo(trigger.time_zone) if trigger.time_zone else UTC
    # Reverse iteration steps one second back before it looks, so it starts one
    # second past now (in whole seconds) to find a tick at now itself.
    start = now.replace(microsecond=0) + timedelta(seconds=1)
    previous = next(CronSim(trigger.expression, start.astimezone(zone), reverse=True))
    previous = previous.astimezone(UTC)
    return previous if previous > last else None


def backfill_ticks(spec: WorkflowSpec, start: datetime, end: datetime) -> list[datetime]:
    """Every tick of ``spec``'s cron triggers from ``start`` to ``end``, both included.

    InvalidArgumentError when there is no cron trigger, the range is empty, or it
    holds more than :data:`MAX_BACKFILL_TICKS` ticks (a typo in a year should not
    make a million runs).
    """
    triggers = cron_triggers(spec)
    if not triggers:
        raise InvalidArgumentError(
            "workflow_name", f"workflow {spec.name!r} has no cron trigger: nothing to backfill"
        )
    if end < start:
        raise InvalidArgumentError(
            "to_time", f"{end.isoformat()} is before from_time {start.isoformat()}"
        )
    ticks: set[datetime] = set()
    for trigger in triggers:
        found = ticks_between(trigger, start - timedelta(seconds=1), end, MAX_BACKFILL_TICKS + 1)
        ticks.update(t for t in found if t >= start)
    if len(ticks) > MAX_BACKFILL_TICKS:
        raise InvalidArgumentError(
            "to_time",
            f"the range holds more than {MAX_BACKFILL_TICKS} ticks; backfill it in parts",
        )
    if not ticks:
        raise InvalidArgumentError(
            "from_time",
            f"no tick of workflow {spec.name!r} falls between {start.isoformat()} "
            f"and {end.isoformat()}",
        )
    return sorted(ticks)


@dataclass(frozen=True)
class ArrivedPartition:
    """The latest announcement of one partition, as the scheduler recorded it."""

    dataset: str
    partition: str
    uri: str
    checksum: str
    arrived_at: datetime

    @property
    def params(self) -> dict[str, str]:
        """The run parameters a data-arrival trigger gives (DataArrivalTrigger's doc)."""
        return {
            "dataset": self.dataset,
            "partition": self.partition,
            "uri": self.uri,
            "checksum": self.checksum,
        }


def backfill_partitions(
    spec: WorkflowSpec, dataset: str, arrived: Sequence[ArrivedPartition]
) -> list[ArrivedPartition]:
    """The partitions of ``arrived`` (of ``dataset``, in a range) that ``spec`` watches.

    InvalidArgumentError when no data-arrival trigger of ``spec`` watches the
    dataset, when more than :data:`MAX_BACKFILL_TICKS` partitions arrived in the
    range (``arrived`` holds one more to say so), or when none of them matches.
    """
    globs = [
        t.data_arrival
        for t in spec.triggers
        if t.WhichOneof("kind") == "data_arrival" and t.data_arrival.dataset == dataset
    ]
    if not globs:
        raise InvalidArgumentError(
            "dataset", f"workflow {spec.name!r} has no data-arrival trigger for {dataset!r}"
        )
    if len(arrived) > MAX_BACKFILL_TICKS:
        raise InvalidArgumentError(
            "to_time",
            f"more than {MAX_BACKFILL_TICKS} partitions of {dataset!r} arrived in the range; "
            "backfill it in parts",
        )
    matched = [p for p in arrived if any(watches(t, dataset, p.partition) for t in globs)]
    if not matched:
        raise InvalidArgumentError(
            "from_time",
            f"no partition of {dataset!r} that workflow {spec.name!r} watches arrived in the range",
        )
    return matched


def admits(limit: int, active: int) -> bool:
    """Whether a lane with ``active`` active runs and ``limit`` (0: none) takes one more."""
    return limit <= 0 or active < limit


def tick_key(workflow: str, tick: datetime) -> str:
    """The trigger key of a cron (or backfill) run: one run per workflow and tick."""
    return f"cron:{workflow}:{tick.astimezone(UTC).isoformat()}"


def arrival_key(workflow: str, dataset: str, partition: str, checksum: str) -> str:
    """The trigger key of a data-arrival run: one run per workflow and partition content."""
    return f"data:{workflow}:{dataset}:{partition}:{checksum}"
