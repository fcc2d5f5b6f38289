"""The gRPC edge: the Open Inference Protocol v2 and Strata's Predict; convert, ask the
data plane, convert back.

``model_name`` is a model's name; ``model_version`` empty means its champion, a
number a loaded version, anything else an alias. Errors are strata.core.errors,
mapped to status codes at the edge (NOT_FOUND naming the model, INVALID_ARGUMENT
naming the input).
"""

from __future__ import annotations

import time
from typing import Any

from typing_extensions import override

from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceServicer
from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
from strata.core.errors import NotFoundError
from strata.gateway.models import Served
from strata.gateway.predict import Predictor
from strata.gateway.tensors import decode_inputs, encode_outputs
from strata.transforms.featurize import TensorSpec

ROLES = {"*": ("predictor",)}
"""Who may call the inference service; ``admin`` may too."""

SERVER_NAME = "strata-gateway"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"


class InferenceApi(GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` on the models in ``served``."""

    def __init__(self, served: Served) -> None:
        self._served = served

    @override
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Any
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @override
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Any
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._served.ready())

    @override
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Any
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    @override
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Any
    ) -> oip.ModelReadyResponse:
        try:
            self._served.resolve(request.name, request.version)
        except NotFoundError:
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=True)

    @override
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Any
    ) -> oip.ModelMetadataResponse:
        return model_metadata(self._served, request.name, request.version)

    @override
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Any
    ) -> oip.ModelInferResponse:
        return await infer(self._served, request)


class PredictionApi(PredictionServiceServicer):
    """Strata's ``PredictionService``: features, model and log in one call."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor

    @override
    async def Predict(self, request: gpb.PredictRequest, context: Any) -> gpb.PredictResponse:
        return await self._predictor.predict(request, time.perf_counter())


def model_metadata(served: Served, name: str, version: str) -> oip.ModelMetadataResponse:
    """The signature of the version ``version`` names (see :meth:`Served.resolve`)."""
    model = served.resolve(name, version)
    return oip.ModelMetadataResponse(
        name=model.name,
        versions=[str(m.version) for m in served.versions(model.name)],
        platform=PLATFORM,
        inputs=[_metadata(spec) for spec in model.inputs],
        outputs=[_metadata(spec) for spec in model.outputs],
    )


async def infer(served: Served, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
    """One ModelInfer on the data plane, whichever edge (gRPC, REST) the request came by."""
    model = served.resolve(request.model_name, request.model_version)
    feeds = decode_inputs(request, model.inputs)
    results = await served.run(model, feeds)
    tensors, raw = encode_outputs(results, model.outputs, raw=bool(request.raw_input_contents))
    return oip.ModelInferResponse(
        model_name=model.name,
        model_version=str(model.version),
        id=request.id,
        outputs=tensors,
        raw_output_contents=raw,
    )


def _metadata(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )
