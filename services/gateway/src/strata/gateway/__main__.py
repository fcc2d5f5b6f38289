"""``python -m strata.gateway``: the deploy gateway: needs Redis; a Kafka outage
only degrades it (it serves from memory).
"""

from strata.core.runtime import KAFKA, REDIS, ServiceSpec, run_service

SPEC = ServiceSpec(name="gateway", requires=(REDIS,), degrades=(KAFKA,))

if __name__ == "__main__":
    run_service(SPEC)
