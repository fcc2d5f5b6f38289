"""``python -m strata.scheduler``: the workflow scheduler, SERVING once Postgres and
Kafka answer.

Roles: ``developer`` applies workflows, triggers, backfills and cancels runs,
``viewer`` and ``developer`` read both; every method not listed is open to
``admin`` only. Task events and arrived data come in through
:mod:`strata.scheduler.handlers`; one loop requests the retries whose backoff
ended, another runs due cron ticks, a third prunes the WatchRun changes of runs
finished longer ago than ``STRATA_SCHEDULER_CHANGES_RETENTION`` (a day by default).
"""

from strata.api.scheduler.v1.scheduler_pb2_grpc import add_SchedulerServiceServicer_to_server
from strata.core.runtime import KAFKA, POSTGRES, Endpoint, Loop, ServiceSpec, run_service
from strata.scheduler.api import SchedulerApi
from strata.scheduler.handlers import (
    fire_due_schedules,
    prune_run_changes,
    register_data_arrivals,
    register_task_events,
    release_due_retries,
)

ROLES = {
    "ApplyWorkflow": ("developer",),
    "GetWorkflow": ("developer", "viewer"),
    "ListWorkflows": ("developer", "viewer"),
    "TriggerRun": ("developer",),
    "GetRun": ("developer", "viewer"),
    "ListRuns": ("developer", "viewer"),
    "WatchRun": ("developer", "viewer"),
    "CancelRun": ("developer",),
    "BackfillWorkflow": ("developer",),
}

SPEC = ServiceSpec(
    name="scheduler",
    requires=(POSTGRES, KAFKA),
    migrations="strata.scheduler.migrations",
    outbox=True,
    endpoints=(Endpoint(add_SchedulerServiceServicer_to_server, SchedulerApi, ROLES),),
    handlers=(register_task_events, register_data_arrivals),
    loops=(
        Loop("release-retries", release_due_retries, every=0.2),
        Loop("fire-cron", fire_due_schedules, every=0.5),
        Loop("prune-run-changes", prune_run_changes),
    ),
)

if __name__ == "__main__":
    run_service(SPEC)
