"""``python -m strata.scheduler``: the workflow scheduler, SERVING once Postgres and
Kafka answer.
"""

from strata.core.runtime import KAFKA, POSTGRES, ServiceSpec, run_service

SPEC = ServiceSpec(
    name="scheduler",
    requires=(POSTGRES, KAFKA),
    migrations="strata.scheduler.migrations",
    outbox=True,
)

if __name__ == "__main__":
    run_service(SPEC)
