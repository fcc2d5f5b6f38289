"""``python -m strata.agent``: a node agent, SERVING once Kafka answers."""

from strata.core.runtime import KAFKA, ServiceSpec, run_service

SPEC = ServiceSpec(name="agent", requires=(KAFKA,))

if __name__ == "__main__":
    run_service(SPEC)
