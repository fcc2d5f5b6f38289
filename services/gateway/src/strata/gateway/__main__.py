"""``python -m strata.gateway``: the deploy gateway. It serves the Open Inference
Protocol (gRPC on the service port, REST on ``STRATA_GATEWAY_HTTP_PORT``) from the
models it holds in memory, loaded from the registry; Redis is required (the online
features of Predict), a Kafka outage only delays alias changes (the reconcile loop
catches up).
"""

import sys

from strata.api.inference.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from strata.core.errors import ConfigError
from strata.core.runtime import KAFKA, REDIS, Endpoint, Loop, ServiceSpec, run_service
from strata.core.runtime.process import EXIT_BAD_SETTINGS
from strata.core.settings import load
from strata.gateway.aliases import follow_aliases
from strata.gateway.api import ROLES, InferenceApi
from strata.gateway.models import Served
from strata.gateway.rest import serve_rest
from strata.gateway.settings import GatewaySettings


def spec(settings: GatewaySettings) -> ServiceSpec:
    """The gateway serving the models ``settings`` names; with none, it serves health only."""
    served = Served(settings.models)
    rest = Loop("serve-rest", serve_rest(served, settings))
    follow = (Loop("follow-aliases", follow_aliases(served, settings)),) if settings.models else ()
    return ServiceSpec(
        name="gateway",
        requires=(REDIS,),
        degrades=(KAFKA,),
        endpoints=(
            Endpoint(
                add_GRPCInferenceServiceServicer_to_server, lambda _: InferenceApi(served), ROLES
            ),
        ),
        loops=(rest, *follow),
    )


def main() -> None:
    try:
        settings = load(GatewaySettings)
    except ConfigError as exc:
        print(f"strata.gateway refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    run_service(spec(settings))


if __name__ == "__main__":
    main()
