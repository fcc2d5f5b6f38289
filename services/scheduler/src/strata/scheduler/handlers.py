"""Where task events enter the scheduler: ``strata.tasks.events``, group "scheduler".

Each report (placed, started, finished, failed, lost) is converted to the run
domain and applied to its run in one transaction that also claims the event id
in the inbox, so a redelivered event changes nothing. Usage samples are not
handled here (the provisioner learns from them).
"""

from __future__ import annotations

from google.protobuf.message import Message

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.runtime import ServiceContext
from strata.core.topics import TASKS_EVENTS
from strata.scheduler.events import REPORTS, report_of
from strata.scheduler.runs import Runs, stale_reports_counter

GROUP = "scheduler"


def register_task_events(context: ServiceContext) -> None:
    """Advance runs on the task events of ``strata.tasks.events``."""
    runs = Runs(context, stale=stale_reports_counter(context))
    events = context.bus.consumer(TASKS_EVENTS, group=GROUP)

    async def on_report(event: Message, envelope: Envelope) -> None:
        run_id, report = report_of(event)
        await runs.report(run_id, report, envelope.event_id, type(event).__name__)

    for report_type in REPORTS:
        events.handle(report_type, on_report)


async def release_due_retries(context: ServiceContext) -> None:
    """One round of the retry loop: request attempts whose backoff ended.

    The wait is durable (``due_at`` in the task's row), so a restarted scheduler
    picks the waits up where they were.
    """
    await Runs(context).release_due()
