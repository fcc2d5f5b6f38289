"""``python -m strata.streamer``: the feature store's service, SERVING once Kafka, Redis,
Postgres and the blob store answer.

It keeps the catalog of feature views (versioned, announced on
``strata.features.events`` through the outbox), streams each topic-sourced view
from its raw topic into Redis and into the offline store (Parquet in the blob
store, announced on ``strata.data.arrived``; :mod:`strata.streamer.streams`),
records the partitions of the datasets dataset-sourced views read, as
``strata.data.arrived`` announces them (:mod:`strata.streamer.handlers`),
answers online reads from Redis, and builds point-in-time training sets from the
offline store in the background (:mod:`strata.streamer.training`). Roles:
``developer`` applies, deletes and backfills views (which also needs the view's
``allowed_groups``, as a read does); ``developer`` and ``service`` (training
tasks) start training sets; ``developer``, ``viewer`` and ``service`` (the gateway and
other services) read views and training sets; each view's ``allowed_groups``
further restricts who reads it (see ``domain.access``).
"""

from strata.api.features.v1.features_pb2_grpc import add_FeatureServiceServicer_to_server
from strata.core.runtime import (
    BLOBS,
    KAFKA,
    POSTGRES,
    REDIS,
    Endpoint,
    Loop,
    ServiceContext,
    ServiceSpec,
    run_service,
)
from strata.streamer.api import FeatureApi
from strata.streamer.current_views import CurrentViews
from strata.streamer.handlers import register_data_arrivals
from strata.streamer.metrics import StreamerMetrics
from strata.streamer.streams import follow_views
from strata.streamer.training import build_training_sets

TRAINING_POLL = 0.5
"""Seconds between looks for training sets to build."""

READERS = ("developer", "viewer", "service")
ROLES = {
    "ApplyFeatureView": ("developer",),
    "GetFeatureView": READERS,
    "ListFeatureViews": READERS,
    "GetOnlineFeatures": READERS,
    "MaterializeTrainingSet": ("developer", "service"),
    "GetTrainingSet": READERS,
    "DeleteFeatureView": ("developer",),
    "BackfillFeatureView": ("developer",),
}


def spec() -> ServiceSpec:
    """The streamer, counting its streams into its own metrics (``strata.streamer.metrics``),
    its online reads served from the current views it keeps (``strata.streamer.current_views``)."""
    current = CurrentViews()

    def feature_api(context: ServiceContext) -> FeatureApi:
        return FeatureApi(context, current)

    return ServiceSpec(
        name="streamer",
        requires=(KAFKA, REDIS, POSTGRES, BLOBS),
        migrations="strata.streamer.migrations",
        outbox=True,
        endpoints=(Endpoint(add_FeatureServiceServicer_to_server, feature_api, ROLES),),
        handlers=(register_data_arrivals,),
        loops=(
            Loop("follow-views", follow_views(StreamerMetrics())),
            Loop("follow-catalog", current.listen),
            Loop("training-sets", build_training_sets, every=TRAINING_POLL),
        ),
    )


if __name__ == "__main__":
    run_service(spec())
