"""Where events enter the scheduler, consumer group "scheduler", and its loops.

``strata.tasks.events``: the reports (placed, started, finished, failed, lost) come
in batches (consecutive events of one type from one partition); each is converted
to the run domain and the batch applied in one transaction that also claims its
event ids in the inbox, so a redelivered event changes nothing
(:meth:`strata.scheduler.runs.Runs.reports`). One transaction per batch instead of
per event is what lets a burst of task events through. Usage samples are not
handled here (the provisioner learns from them).

``strata.data.arrived``: each DataArrived starts a run of every active workflow
watching the partition (:mod:`strata.scheduler.triggers`).

Loops: one requests the retries whose backoff ended, one runs due cron ticks, one
prunes the WatchRun changes of runs finished longer ago than the retention.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.protobuf.message import Message

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.data.v1.data_pb2 import DataArrived
from strata.core.runtime import ServiceContext
from strata.core.settings import load
from strata.core.topics import DATA_ARRIVED, TASKS_EVENTS
from strata.scheduler.clock import SchedulerSettings, clock_of
from strata.scheduler.events import REPORTS, report_of
from strata.scheduler.runs import Delivered, Runs, stale_reports_counter
from strata.scheduler.triggers import Triggers, unwatched_counter

GROUP = "scheduler"


def register_task_events(context: ServiceContext) -> None:
    """Advance runs on the task events of ``strata.tasks.events``."""
    settings = load(SchedulerSettings)
    runs = Runs(
        context,
        stale=stale_reports_counter(context),
        clock=clock_of(settings),
        max_evictions=settings.max_evictions,
        max_losses=settings.max_losses,
    )
    events = context.bus.consumer(TASKS_EVENTS, group=GROUP)

    async def on_reports(batch: Sequence[tuple[Message, Envelope]]) -> None:
        await runs.reports(
            [
                (Delivered(*report_of(event), event_type=type(event).__name__), envelope)
                for event, envelope in batch
            ]
        )

    for report_type in REPORTS:
        events.handle_batch(report_type, on_reports)


def register_data_arrivals(context: ServiceContext) -> None:
    """Start runs on the DataArrived events of ``strata.data.arrived``."""
    triggers = Triggers(
        context, Runs(context, clock=clock_of()), unwatched=unwatched_counter(context)
    )
    arrivals = context.bus.consumer(DATA_ARRIVED, group=GROUP)

    @arrivals.on(DataArrived)
    async def on_arrived(event: DataArrived, envelope: Envelope) -> None:
        await triggers.arrived(event, envelope.event_id)


async def release_due_retries(context: ServiceContext) -> None:
    """One round of the retry loop: request attempts whose backoff ended.

    The wait is durable (``due_at`` in the task's row), so a restarted scheduler
    picks the waits up where they were.
    """
    await Runs(context, clock=clock_of()).release_due()


PRUNE_EVERY_MAX = 60.0
"""Longest pause between two prunings of run changes, in seconds."""


async def prune_run_changes(context: ServiceContext) -> None:
    """The pruning loop: every half retention (at most a minute), delete the WatchRun
    changes of runs finished more than ``STRATA_SCHEDULER_CHANGES_RETENTION`` ago.

    Without it ``run_changes`` grows by every change of every run forever.
    """
    retention = load(SchedulerSettings).changes_retention
    runs = Runs(context, clock=clock_of())
    while True:
        await runs.prune_changes(retention)
        await asyncio.sleep(min(retention.total_seconds() / 2, PRUNE_EVERY_MAX))


async def fire_due_schedules(context: ServiceContext) -> None:
    """One round of the cron loop: a run per due tick of every schedule.

    The last tick of each schedule is durable and moves in the transaction that
    creates its runs, so a restarted scheduler neither repeats nor skips a tick.
    """
    runs = Runs(context, clock=clock_of())
    await Triggers(context, runs).fire_due()
