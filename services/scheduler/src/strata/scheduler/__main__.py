"""``python -m strata.scheduler``: the scheduler, SERVING once Postgres and Kafka answer."""

from strata.core.service import KAFKA, POSTGRES, run_service

if __name__ == "__main__":
    run_service("scheduler", dependencies=[POSTGRES, KAFKA])
