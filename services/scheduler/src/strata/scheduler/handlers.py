"""Where events enter the scheduler, consumer group "scheduler", and its loops.

``strata.tasks.events``: each report (placed, started, finished, failed, lost) is
converted to the run domain and applied to its run in one transaction that also
claims the event id in the inbox, so a redelivered event changes nothing. Usage
samples are not handled here (the provisioner learns from them).

``strata.data.arrived``: each DataArrived starts a run of every active workflow
watching the partition (:mod:`strata.scheduler.triggers`).

Loops: one requests the retries whose backoff ended, one runs due cron ticks.
"""

from __future__ import annotations

from google.protobuf.message import Message

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.data.v1.data_pb2 import DataArrived
from strata.core.runtime import ServiceContext
from strata.core.topics import DATA_ARRIVED, TASKS_EVENTS
from strata.scheduler.clock import clock_of
from strata.scheduler.events import REPORTS, report_of
from strata.scheduler.runs import Runs, stale_reports_counter
from strata.scheduler.triggers import Triggers, unwatched_counter

GROUP = "scheduler"


def register_task_events(context: ServiceContext) -> None:
    """Advance runs on the task events of ``strata.tasks.events``."""
    runs = Runs(context, stale=stale_reports_counter(context), clock=clock_of())
    events = context.bus.consumer(TASKS_EVENTS, group=GROUP)

    async def on_report(event: Message, envelope: Envelope) -> None:
        run_id, report = report_of(event)
        await runs.report(run_id, report, envelope.event_id, type(event).__name__)

    for report_type in REPORTS:
        events.handle(report_type, on_report)


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


async def fire_due_schedules(context: ServiceContext) -> None:
    """One round of the cron loop: a run per due tick of every schedule.

    The last tick of each schedule is durable and moves in the transaction that
    creates its runs, so a restarted scheduler neither repeats nor skips a tick.
    """
    runs = Runs(context, clock=clock_of())
    await Triggers(context, runs).fire_due()
