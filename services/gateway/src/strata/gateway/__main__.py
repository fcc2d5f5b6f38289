"""``python -m strata.gateway``: the deploy gateway, SERVING once Kafka and Redis answer."""

from strata.core.service import KAFKA, REDIS, run_service

if __name__ == "__main__":
    run_service("gateway", dependencies=[KAFKA, REDIS])
