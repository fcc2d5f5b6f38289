"""``python -m strata.scheduler``: the workflow scheduler, SERVING once Postgres and
Kafka answer.

Roles: ``developer`` applies workflows, ``viewer`` and ``developer`` read them;
every method not listed (the run methods to come) is open to ``admin`` only.
"""

from strata.api.scheduler.v1.scheduler_pb2_grpc import add_SchedulerServiceServicer_to_server
from strata.core.runtime import KAFKA, POSTGRES, Endpoint, ServiceSpec, run_service
from strata.scheduler.api import SchedulerApi

ROLES = {
    "ApplyWorkflow": ("developer",),
    "GetWorkflow": ("developer", "viewer"),
    "ListWorkflows": ("developer", "viewer"),
}

SPEC = ServiceSpec(
    name="scheduler",
    requires=(POSTGRES, KAFKA),
    migrations="strata.scheduler.migrations",
    outbox=True,
    endpoints=(Endpoint(add_SchedulerServiceServicer_to_server, SchedulerApi, ROLES),),
)

if __name__ == "__main__":
    run_service(SPEC)
