"""``python -m strata.scheduler``: the workflow scheduler, SERVING once Postgres and
Kafka answer.

Roles: ``developer`` applies workflows and triggers runs, ``viewer`` and
``developer`` read both; every method not listed (the run methods to come) is open
to ``admin`` only. Task events come in through :mod:`strata.scheduler.handlers`;
a loop requests the retries whose backoff ended.
"""

from strata.api.scheduler.v1.scheduler_pb2_grpc import add_SchedulerServiceServicer_to_server
from strata.core.runtime import KAFKA, POSTGRES, Endpoint, Loop, ServiceSpec, run_service
from strata.scheduler.api import SchedulerApi
from strata.scheduler.handlers import register_task_events, release_due_retries

ROLES = {
    "ApplyWorkflow": ("developer",),
    "GetWorkflow": ("developer", "viewer"),
    "ListWorkflows": ("developer", "viewer"),
    "TriggerRun": ("developer",),
    "GetRun": ("developer", "viewer"),
    "ListRuns": ("developer", "viewer"),
}

SPEC = ServiceSpec(
    name="scheduler",
    requires=(POSTGRES, KAFKA),
    migrations="strata.scheduler.migrations",
    outbox=True,
    endpoints=(Endpoint(add_SchedulerServiceServicer_to_server, SchedulerApi, ROLES),),
    handlers=(register_task_events,),
    loops=(Loop("release-retries", release_due_retries, every=0.2),),
)

if __name__ == "__main__":
    run_service(SPEC)
