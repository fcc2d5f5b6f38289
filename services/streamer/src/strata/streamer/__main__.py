"""``python -m strata.streamer``: the streamer, SERVING once Kafka, Redis and Postgres answer."""

from strata.core.service import KAFKA, POSTGRES, REDIS, run_service

if __name__ == "__main__":
    run_service("streamer", dependencies=[KAFKA, REDIS, POSTGRES])
