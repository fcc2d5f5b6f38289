"""The REST bodies of the Open Inference Protocol and of Strata's Predict, to their gRPC
messages and back.

Pure: no I/O. The REST edge turns a JSON (or binary-extension) body into the same
``ModelInferRequest`` the gRPC edge receives, so both run one data plane and one
set of checks. Every input travels on as raw bytes of its declared datatype, which
serves FP16 too; a body that is not the protocol's shape is refused with
:class:`InvalidArgumentError` naming the field, e.g. ``inputs[0].data``.

The binary tensor extension (KServe, Triton): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the tensors' bytes, in the
order of the inputs that say ``"parameters": {"binary_data_size": n}``. Outputs go
back in binary when the request asks for it per output (``binary_data``) or for all
(``binary_data_output``).

Predict's body mirrors ``PredictRequest`` with protobuf's field names (``rows`` of
``entity_keys`` and ``features``, ``alias`` or ``version``, ``request_id``); a value
is a plain JSON scalar (an integer is ``int64_value``, a fraction ``double_value``),
or, for the kinds JSON has no scalar for (timestamps, lists, bytes), a ``Value``
object in protobuf's JSON form, e.g. ``{"timestamp_value": "2026-01-02T03:04:05Z"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.inference import grpc_service_pb2 as oip
from strata.core.errors import InvalidArgumentError
from strata.transforms.featurize import DTYPES, Array

JSON = dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """How the caller wants the outputs: which ones (None: all) and which in binary."""

    names: tuple[str, ...] | None
    binary: Mapping[str, bool]
    binary_by_default: bool

    def in_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_by_default)


def decode_infer(
    model: str, version: str, body: bytes, header_length: int | None
) -> tuple[oip.ModelInferRequest, Reply]:
    """The ModelInferRequest a REST infer body asks for, and how to answer it.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: the JSON is
    that many bytes and binary tensors follow; None means the body is all JSON.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidArgumentError(
            "Inference-Header-Content-Length",
            f"is {header_length}, but the body has {len(body)} bytes",
        )
    split = len(body) if header_length is None else header_length
    document = _object(_json(body[:split]), "body")
    binary = memoryview(body)[split:]
    request = oip.ModelInferRequest(
        model_name=model, model_version=version, id=_text(document, "id", "id", default="")
    )
    entries = document.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgumentError("inputs", "want a non-empty list of input tensors")
    offset = 0
    for index, entry in enumerate(entries):
        field = f"inputs[{index}]"
        tensor = _object(entry, field)
        name = _text(tensor, "name", f"{field}.name")
        datatype = _text(tensor, "datatype", f"{field}.datatype")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidArgumentError(
                f"{field}.shape", f"input {name!r}: want a list of sizes >= 0, got {shape!r}"
            )
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = _binary_size(tensor, field)
        if size is None:
            request.raw_input_contents.append(_values(tensor, name, datatype, field))
            continue
        if offset + size > len(binary):
            raise InvalidArgumentError(
                f"{field}.parameters.binary_data_size",
                f"input {name!r} wants {size} bytes at offset {offset}, but the binary part "
                f"of the body has {len(binary)}",
            )
        request.raw_input_contents.append(bytes(binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise InvalidArgumentError(
            "Inference-Header-Content-Length",
            f"the inputs' binary_data_size add up to {offset} bytes, but {len(binary)} "
            "follow the JSON header",
        )
    return request, _reply(document)


def encode_infer(response: oip.ModelInferResponse, reply: Reply) -> tuple[bytes, int | None]:
    """The REST body of ``response`` and, when it carries binary tensors, the JSON's length.

    ``response`` holds its outputs as raw bytes, as :func:`decode_infer`'s requests ask.
    An output the caller asked for that the model lacks is refused, naming it.
    """
    tensors = {t.name: t for t in response.outputs}
    blobs_of = dict(zip(tensors, response.raw_output_contents, strict=True))
    names = reply.names if reply.names is not None else tuple(tensors)
    outputs: list[JSON] = []
    blobs: list[bytes] = []
    for index, name in enumerate(names):
        if name not in tensors:
            raise InvalidArgumentError(
                f"outputs[{index}].name",
                f"the model has no output {name!r}; its outputs are {sorted(tensors)}",
            )
        tensor, blob = tensors[name], blobs_of[name]
        entry: JSON = {"name": name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if reply.in_binary(name):
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = np.frombuffer(blob, dtype=DTYPES[tensor.datatype]).tolist()
        outputs.append(entry)
    document: JSON = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def decode_predict(model: str, body: bytes) -> gpb.PredictRequest:
    """The PredictRequest for ``model`` that a REST predict body asks for."""
    document = _object(_json(body), "body")
    _known(document, ("alias", "version", "rows", "request_id"), "")
    request = gpb.PredictRequest(
        model_name=model, request_id=_text(document, "request_id", "request_id", default="")
    )
    if "alias" in document and "version" in document:
        raise InvalidArgumentError("version", "give an alias or a version, not both")
    if "alias" in document:
        request.alias = _text(document, "alias", "alias")
    if "version" in document:
        version = document["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidArgumentError("version", f"want a version number >= 1, got {version!r}")
        request.version = version
    entries = document.get("rows")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgumentError("rows", "want a non-empty list of rows to predict")
    for index, entry in enumerate(entries):
        field = f"rows[{index}]"
        row = _object(entry, field)
        _known(row, ("entity_keys", "features"), f"{field}.")
        message = request.rows.add()
        for part, values in (("entity_keys", message.entity_keys), ("features", message.features)):
            for column, value in _object(row.get(part, {}), f"{field}.{part}").items():
                values[column].CopyFrom(_value(value, f"{field}.{part}[{column}]"))
    return request


def encode_predict(response: gpb.PredictResponse) -> bytes:
    """The REST body of a PredictResponse: its fields by their protobuf names, values plain."""
    document: JSON = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "alias": response.alias,
        "predictions": [
            {
                "prediction_id": prediction.prediction_id,
                "outputs": {name: _plain(v) for name, v in prediction.outputs.items()},
            }
            for prediction in response.predictions
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _known(document: JSON, keys: tuple[str, ...], prefix: str) -> None:
    """Refuse a key outside ``keys``: a misspelt ``alais`` must not quietly mean champion."""
    unknown = sorted(set(document) - set(keys))
    if unknown:
        raise InvalidArgumentError(
            f"{prefix}{unknown[0]}", f"unknown key; the keys here are {', '.join(keys)}"
        )


_SCALARS = ("int64_value", "double_value", "string_value", "bool_value")


def _value(value: object, field: str) -> fpb.Value:
    """The ``Value`` of a JSON value: a scalar by its JSON type, an object in protobuf's form."""
    if value is None:
        return fpb.Value()
    if isinstance(value, bool):
        return fpb.Value(bool_value=value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidArgumentError(field, f"want a 64-bit integer, got {value}")
        return fpb.Value(int64_value=value)
    if isinstance(value, float):
        return fpb.Value(double_value=value)
    if isinstance(value, str):
        return fpb.Value(string_value=value)
    if isinstance(value, dict):
        try:
            return json_format.ParseDict(value, fpb.Value())
        except json_format.ParseError as exc:
            raise InvalidArgumentError(field, f"is not a Value object: {exc}") from None
    raise InvalidArgumentError(
        field,
        "want a JSON scalar, or a Value object such as "
        f'{{"double_list_value": {{"values": [1.5, 2.0]}}}}; got {type(value).__name__}',
    )


def _plain(value: fpb.Value) -> object:
    """A ``Value`` as JSON: scalars and lists plain, other kinds in protobuf's JSON form."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind.endswith("_list_value"):
        return list(getattr(value, kind).values)
    return json_format.MessageToDict(value, preserving_proto_field_name=True)


def _reply(document: JSON) -> Reply:
    parameters = _object(document.get("parameters", {}), "parameters")
    by_default = _flag(parameters, "binary_data_output", "parameters.binary_data_output")
    entries = document.get("outputs")
    if entries is None:
        return Reply(None, {}, by_default)
    if not isinstance(entries, list):
        raise InvalidArgumentError("outputs", f"want a list of requested outputs, got {entries!r}")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, entry in enumerate(entries):
        field = f"outputs[{index}]"
        tensor = _object(entry, field)
        name = _text(tensor, "name", f"{field}.name")
        names.append(name)
        options = _object(tensor.get("parameters", {}), f"{field}.parameters")
        if "binary_data" in options:
            binary[name] = _flag(options, "binary_data", f"{field}.parameters.binary_data")
    return Reply(tuple(names), binary, by_default)


def _values(tensor: JSON, name: str, datatype: str, field: str) -> bytes:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgumentError(
            f"{field}.datatype",
            f"input {name!r} has datatype {datatype!r}; served datatypes are {sorted(DTYPES)}",
        )
    if "data" not in tensor:
        raise InvalidArgumentError(
            f"{field}.data",
            f"input {name!r} has neither data nor parameters.binary_data_size",
        )
    try:
        values = np.asarray(tensor["data"])
    except ValueError as exc:  # ragged nesting
        raise InvalidArgumentError(
            f"{field}.data", f"input {name!r}: want {datatype} values, flat or nested ({exc})"
        ) from None
    problem = _unfit(values, dtype)
    if problem:
        raise InvalidArgumentError(f"{field}.data", f"input {name!r} is {datatype}: {problem}")
    return values.astype(dtype).tobytes()


def _unfit(values: Array, dtype: np.dtype[np.generic]) -> str | None:
    """Why ``values`` (as JSON gave them) do not convert to ``dtype`` exactly, or None.

    A cast would silently truncate 1.5 to 1 or wrap 300 to 44 in an INT8, so such
    values are refused rather than served as something the caller did not send.
    """
    if values.dtype.kind not in "biuf":
        return "want numbers (true/false for BOOL), flat or nested lists of them"
    if dtype.kind == "b":
        return None if values.dtype.kind == "b" else "want true or false values"
    if dtype.kind in "iu" and values.size:
        if values.dtype.kind == "f" and not np.array_equal(values, np.trunc(values)):
            return "want whole numbers"
        info = np.iinfo(dtype.name)
        if values.min() < info.min or values.max() > info.max:
            return f"want whole numbers from {info.min} to {info.max}"
    return None


def _binary_size(tensor: JSON, field: str) -> int | None:
    parameters = _object(tensor.get("parameters", {}), f"{field}.parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgumentError(
            f"{field}.parameters.binary_data_size", f"want a byte count >= 0, got {size!r}"
        )
    return size


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError("body", f"is not JSON: {exc}") from None


def _object(value: object, field: str) -> JSON:
    if not isinstance(value, dict):
        raise InvalidArgumentError(field, f"want a JSON object, got {type(value).__name__}")
    return value


def _text(document: JSON, key: str, field: str, default: str | None = None) -> str:
    value = document.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise InvalidArgumentError(field, f"want a non-empty string, got {value!r}")
    return value


def _flag(document: JSON, key: str, field: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgumentError(field, f"want true or false, got {value!r}")
    return value
