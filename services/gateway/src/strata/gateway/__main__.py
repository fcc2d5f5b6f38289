"""``python -m strata.gateway``: the deploy gateway. It serves the Open Inference
Protocol (gRPC on the service port, REST on ``STRATA_GATEWAY_HTTP_PORT``) and Strata's
Predict from the models it holds in memory, loaded from the registry; Redis is
required (the online features of Predict), a Kafka outage only delays alias changes
(the reconcile loop catches up) and the prediction log (kept in a bounded buffer).
"""

import sys

from strata.api.gateway.v1.gateway_pb2_grpc import add_PredictionServiceServicer_to_server
from strata.api.inference.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from strata.core.errors import ConfigError
from strata.core.runtime import (
    KAFKA,
    REDIS,
    Endpoint,
    Loop,
    ServiceContext,
    ServiceSpec,
    run_service,
)
from strata.core.runtime.process import EXIT_BAD_SETTINGS
from strata.core.settings import load
from strata.gateway.aliases import follow_aliases
from strata.gateway.api import ROLES, InferenceApi, PredictionApi
from strata.gateway.metrics import GatewayMetrics
from strata.gateway.models import Served
from strata.gateway.predict import Predictor
from strata.gateway.prediction_log import PredictionLog
from strata.gateway.rest import serve_rest
from strata.gateway.settings import GatewaySettings
from strata.gateway.shadows import Shadows


def spec(settings: GatewaySettings) -> ServiceSpec:
    """The gateway serving the models ``settings`` names; with none, it serves health only."""
    metrics = GatewayMetrics()
    served = Served(
        settings.models,
        batch_rows=settings.batch_rows,
        batch_wait=settings.batch_wait,
        inline_budget=settings.inline_budget,
        model_threads=settings.model_threads,
        counted=metrics.count_run,
    )
    predictions = PredictionLog(
        settings.log_buffer, settings.log_batch, metrics, linger=settings.log_linger
    )
    shadows = Shadows(settings.shadow_queue, predictions, metrics)

    def predictor(context: ServiceContext) -> Predictor:
        return Predictor(served, context.redis_reads, predictions, shadows)

    def prediction_api(context: ServiceContext) -> PredictionApi:
        metrics.attach(context.metrics.registry)
        return PredictionApi(predictor(context))

    async def shadow_challengers(context: ServiceContext) -> None:
        await shadows.worker(predictor(context).shadow)(context)

    def inference_api(context: ServiceContext) -> InferenceApi:
        metrics.attach(context.metrics.registry)
        return InferenceApi(served)

    rest = Loop("serve-rest", serve_rest(served, predictor, settings))
    follow = (Loop("follow-aliases", follow_aliases(served, settings)),) if settings.models else ()
    return ServiceSpec(
        name="gateway",
        requires=(REDIS,),
        degrades=(KAFKA,),
        endpoints=(
            Endpoint(add_GRPCInferenceServiceServicer_to_server, inference_api, ROLES),
            Endpoint(add_PredictionServiceServicer_to_server, prediction_api, ROLES),
        ),
        loops=(
            rest,
            *follow,
            Loop("log-predictions", predictions.run),
            Loop("shadow-challengers", shadow_challengers),
        ),
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
