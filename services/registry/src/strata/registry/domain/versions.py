"""How a registered version is put together from the request and its stored artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from strata.api.registry.v1 import registry_pb2 as pb
from strata.registry.domain.formats import OnnxModel, Tensor


def new_version(
    request: pb.RegisterVersionRequest,
    *,
    number: int,
    artifacts: Sequence[pb.Artifact],
    onnx: OnnxModel,
    model_owner: str,
    principal: str,
    now: datetime,
) -> pb.ModelVersion:
    """The immutable version: what the client declared, plus what the ONNX file says.

    The signature and the ONNX format fields of the definition come from the file,
    never from the request, so they cannot disagree with what the gateway loads.
    """
    definition = pb.ModelDefinition()
    definition.CopyFrom(request.definition)
    definition.onnx_ir_version = onnx.ir_version
    definition.onnx_opsets.clear()
    definition.onnx_opsets.update(onnx.opsets)
    definition.producer_name = onnx.producer_name
    definition.producer_version = onnx.producer_version
    created_at = Timestamp()
    created_at.FromDatetime(now)
    return pb.ModelVersion(
        model_name=request.model_name,
        version=number,
        artifacts=artifacts,
        metrics=request.metrics,
        params=request.params,
        lineage=request.lineage,
        signature=pb.Signature(
            inputs=[_spec(t) for t in onnx.inputs], outputs=[_spec(t) for t in onnx.outputs]
        ),
        feature_bindings=request.feature_bindings,
        description=request.description,
        labels=request.labels,
        created_at=created_at,
        created_by=principal,
        definition=definition,
        dependencies=request.dependencies,
        generation=request.generation,
        curves=request.curves,
        owner=request.owner or model_owner,
        task=request.task,
    )


def _spec(tensor: Tensor) -> pb.TensorSpec:
    return pb.TensorSpec(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
