"""``python -m strata.streamer``: the feature store's service, SERVING once Kafka, Redis
and Postgres answer.

It keeps the catalog of feature views (versioned, announced on
``strata.features.events`` through the outbox), streams each topic-sourced view
from its raw topic into Redis (:mod:`strata.streamer.streams`) and answers online
reads from there. Roles: ``developer`` applies views; ``developer``, ``viewer`` and
``service`` (the gateway and other services) read them; each view's
``allowed_groups`` further restricts who reads it (see ``domain.access``).
"""

from strata.api.features.v1.features_pb2_grpc import add_FeatureServiceServicer_to_server
from strata.core.runtime import KAFKA, POSTGRES, REDIS, Endpoint, Loop, ServiceSpec, run_service
from strata.streamer.api import FeatureApi
from strata.streamer.streams import follow_views

READERS = ("developer", "viewer", "service")
ROLES = {
    "ApplyFeatureView": ("developer",),
    "GetFeatureView": READERS,
    "ListFeatureViews": READERS,
    "GetOnlineFeatures": READERS,
}

SPEC = ServiceSpec(
    name="streamer",
    requires=(KAFKA, REDIS, POSTGRES),
    migrations="strata.streamer.migrations",
    outbox=True,
    endpoints=(Endpoint(add_FeatureServiceServicer_to_server, FeatureApi, ROLES),),
    loops=(Loop("follow-views", follow_views),),
)

if __name__ == "__main__":
    run_service(SPEC)
