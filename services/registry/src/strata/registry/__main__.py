"""``python -m strata.registry``: the model registry, SERVING once Postgres, the blob
store and Kafka (for the outbox of alias and version events) answer.

It also keeps the predictions the gateway logs (:mod:`strata.registry.predictions`)
for ``STRATA_REGISTRY_PREDICTIONS_RETENTION``, the anchor of a prediction's lineage.
"""

import sys

from strata.api.registry.v1.registry_pb2_grpc import add_ModelRegistryServiceServicer_to_server
from strata.core.errors import ConfigError
from strata.core.runtime import (
    BLOBS,
    KAFKA,
    POSTGRES,
    Endpoint,
    Loop,
    ServiceContext,
    ServiceSpec,
    run_service,
)
from strata.core.runtime.process import EXIT_BAD_SETTINGS
from strata.core.settings import load
from strata.registry.api import ROLES, RegistryApi
from strata.registry.predictions import prune_predictions, register_predictions
from strata.registry.settings import RegistrySettings
from strata.registry.uploads import expire_uploads


def spec(settings: RegistrySettings) -> ServiceSpec:
    """The registry, keeping artifacts within the sizes ``settings`` allow."""
    limits = settings.limits()

    def registry_api(context: ServiceContext) -> RegistryApi:
        return RegistryApi(context, limits, settings.scheduler)

    return ServiceSpec(
        name="registry",
        requires=(POSTGRES, BLOBS, KAFKA),
        migrations="strata.registry.migrations",
        outbox=True,
        endpoints=(Endpoint(add_ModelRegistryServiceServicer_to_server, registry_api, ROLES),),
        handlers=(register_predictions,),
        loops=(
            Loop("expire-uploads", expire_uploads, every=30.0),
            Loop("prune-predictions", prune_predictions(settings.predictions_retention)),
        ),
    )


def main() -> None:
    try:
        settings = load(RegistrySettings)
    except ConfigError as exc:
        print(f"strata.registry refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    run_service(spec(settings))


if __name__ == "__main__":
    main()
