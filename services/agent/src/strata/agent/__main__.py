"""``python -m strata.agent``: a node agent (health only for now), SERVING once Kafka answers."""

from strata.core.service import KAFKA, run_service

if __name__ == "__main__":
    run_service("agent", dependencies=[KAFKA])
