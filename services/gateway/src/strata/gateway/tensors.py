"""Open Inference Protocol tensors to numpy and back, checked against a model's signature.

Pure: no I/O. A request whose tensors do not fit the model is refused with
:class:`InvalidArgumentError` naming the input and both shapes or datatypes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from strata.api.inference import grpc_service_pb2 as oip
from strata.core.errors import InvalidArgumentError
from strata.transforms.featurize import DTYPES, Array, TensorSpec

_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
"""The InferTensorContents field of each datatype (FP16 travels only as raw bytes)."""


def decode_inputs(request: oip.ModelInferRequest, inputs: Sequence[TensorSpec]) -> dict[str, Array]:
    """The request's input tensors as arrays by name, each checked against ``inputs``."""
    wanted = {spec.name: spec for spec in inputs}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            "raw_input_contents",
            f"holds {len(raw)} tensors for {len(request.inputs)} inputs; "
            "send one per input, in the order of inputs, or none",
        )
    arrays: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        spec = wanted.get(tensor.name)
        if spec is None:
            raise InvalidArgumentError(
                f"{field}.name",
                f"the model has no input {tensor.name!r}; its inputs are {sorted(wanted)}",
            )
        if tensor.name in arrays:
            raise InvalidArgumentError(f"{field}.name", f"input {tensor.name!r} is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidArgumentError(
                f"{field}.datatype",
                f"input {tensor.name!r} has datatype {tensor.datatype!r}; "
                f"the model expects {spec.datatype!r}",
            )
        shape = list(tensor.shape)
        if not spec.fits(shape):
            raise InvalidArgumentError(
                f"{field}.shape",
                f"input {tensor.name!r} has shape {shape}; the model expects "
                f"{list(spec.shape)} (-1: any size)",
            )
        values = _values(tensor, raw[index] if raw else None, spec, index)
        if values.size != math.prod(shape):
            raise InvalidArgumentError(
                f"{field}.contents",
                f"input {tensor.name!r} has {values.size} values; shape {shape} "
                f"needs {math.prod(shape)}",
            )
        arrays[tensor.name] = values.reshape(shape)
    missing = sorted(set(wanted) - set(arrays))
    if missing:
        raise InvalidArgumentError("inputs", f"the model's inputs {missing} are missing")
    return arrays


def _values(
    tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, spec: TensorSpec, index: int
) -> Array:
    dtype = DTYPES[spec.datatype]
    if raw is not None:
        if len(raw) % dtype.itemsize:
            raise InvalidArgumentError(
                f"raw_input_contents[{index}]",
                f"input {tensor.name!r}: {len(raw)} bytes is not a whole number of "
                f"{spec.datatype} values ({dtype.itemsize} bytes each)",
            )
        return np.frombuffer(raw, dtype=dtype)
    contents = _CONTENTS.get(spec.datatype)
    if contents is None:
        raise InvalidArgumentError(
            f"inputs[{index}].contents",
            f"input {tensor.name!r}: {spec.datatype} travels in raw_input_contents only",
        )
    return np.asarray(getattr(tensor.contents, contents), dtype=dtype)


def encode_outputs(
    outputs: Mapping[str, Array], specs: Sequence[TensorSpec], *, raw: bool
) -> tuple[list[oip.ModelInferResponse.InferOutputTensor], list[bytes]]:
    """Output tensors in the order of ``specs``: typed contents, or raw bytes when ``raw``.

    Raw answers follow raw requests, so a client gets back the encoding it sent; a
    datatype with no contents field (FP16) makes the whole answer raw, as OIP wants
    all outputs in one encoding.
    """
    raw = raw or any(spec.datatype not in _CONTENTS for spec in specs)
    tensors: list[oip.ModelInferResponse.InferOutputTensor] = []
    blobs: list[bytes] = []
    for spec in specs:
        array = np.ascontiguousarray(outputs[spec.name], dtype=DTYPES[spec.datatype])
        tensor = oip.ModelInferResponse.InferOutputTensor(
            name=spec.name, datatype=spec.datatype, shape=list(array.shape)
        )
        if raw:
            blobs.append(array.tobytes())
        else:
            getattr(tensor.contents, _CONTENTS[spec.datatype]).extend(array.ravel().tolist())
        tensors.append(tensor)
    return tensors, blobs
