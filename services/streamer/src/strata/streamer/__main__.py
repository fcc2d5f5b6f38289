"""``python -m strata.streamer``: the feature streamer, SERVING once Kafka, Redis and
Postgres answer.
"""

from strata.core.runtime import KAFKA, POSTGRES, REDIS, ServiceSpec, run_service

SPEC = ServiceSpec(name="streamer", requires=(KAFKA, REDIS, POSTGRES))

if __name__ == "__main__":
    run_service(SPEC)
