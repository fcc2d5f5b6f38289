"""The contracts under protos/: what producers, consumers and outside clients rely on.

Every event of the catalog must survive the trip through the Envelope that Kafka
carries, must say which catalog topic and key it travels under, and the Open
Inference Protocol service must be the one KServe, Triton and MLServer clients call,
down to field numbers. The generated code must match the protos it came from.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, message_factory, symbol_database
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

import strata.api
from strata.api.common.v1 import event_pb2
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.inference import grpc_service_pb2, grpc_service_pb2_grpc
from strata.core.topics import CATALOG

ROOT = Path(__file__).resolve().parents[2]


def _generated_modules() -> list[Any]:
    """Import every ``*_pb2`` module of strata.api, so every contract is registered."""
    names = (
        info.name
        for info in pkgutil.walk_packages(strata.api.__path__, "strata.api.")
        if info.name.endswith("_pb2")
    )
    return [importlib.import_module(name) for name in sorted(names)]


def _events() -> list[Descriptor]:
    """Every message marked with the ``(strata.common.v1.event)`` option."""
    found = []
    for module in _generated_modules():
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            if descriptor.GetOptions().HasExtension(event_pb2.event):
                found.append(descriptor)
    return found


EVENTS = _events()


def _options(descriptor: Descriptor) -> event_pb2.EventOptions:
    options: event_pb2.EventOptions = descriptor.GetOptions().Extensions[event_pb2.event]
    return options


def _fill(message: Message, depth: int = 0) -> Message:
    """Set every field of ``message`` to a non-default value, nested messages too.

    A payload with all its fields set is what shows a round trip loses nothing; the
    depth limit stops at recursive types (Struct inside Value inside Struct).
    """
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and depth >= 3:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _fill_map_entry(getattr(message, field.name), field.message_type, depth)
        elif field.is_repeated and field.message_type is not None:
            _fill(getattr(message, field.name).add(), depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).append(_scalar(field))
        elif field.message_type is not None:
            _fill(getattr(message, field.name), depth + 1)
        else:
            setattr(message, field.name, _scalar(field))
    return message


def _fill_map_entry(container: Any, entry: Any, depth: int) -> None:
    key = _scalar(entry.fields_by_name["key"])
    value_field = entry.fields_by_name["value"]
    if value_field.message_type is not None:
        _fill(container[key], depth + 1)
    else:
        container[key] = _scalar(value_field)


def _scalar(field: Any) -> Any:
    """A non-default value for a scalar ``field`` (a FieldDescriptor)."""
    if field.enum_type is not None:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\x01"
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-1"
    by_cpp_type: dict[int, Any] = {
        FieldDescriptor.CPPTYPE_BOOL: True,
        FieldDescriptor.CPPTYPE_DOUBLE: 2.5,
        FieldDescriptor.CPPTYPE_FLOAT: 0.5,
    }
    return by_cpp_type.get(field.cpp_type, 7)


def _resolve_key(message: Message, path: str) -> Any:
    value: Any = message
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_each_topic_of_the_catalog_has_events_and_each_event_a_catalog_topic() -> None:
    event_topics = {_options(d).topic for d in EVENTS}

    assert event_topics == {topic.name for topic in CATALOG}


@pytest.mark.parametrize("descriptor", EVENTS, ids=lambda d: d.full_name)
def test_event_names_a_string_key_field_and_a_schema_version(descriptor: Descriptor) -> None:
    options = _options(descriptor)
    *parents, leaf = options.key_field.split(".")
    for part in parents:
        field = descriptor.fields_by_name.get(part)
        assert field is not None, options.key_field
        assert field.message_type is not None, options.key_field
        descriptor = field.message_type

    key = descriptor.fields_by_name.get(leaf)

    assert key is not None, options.key_field
    assert key.type == FieldDescriptor.TYPE_STRING, options.key_field
    assert not key.is_repeated
    assert options.schema_version >= 1


@pytest.mark.parametrize("descriptor", EVENTS, ids=lambda d: d.full_name)
def test_event_round_trips_through_the_envelope(descriptor: Descriptor) -> None:
    payload = _fill(message_factory.GetMessageClass(descriptor)())
    options = _options(descriptor)
    envelope = Envelope(
        event_id="0b7e8c2e-4a8f-4f43-9a51-3c1b8e0f6d21",
        type=descriptor.full_name,
        occurred_at=Timestamp(seconds=1_717_200_000),
        producer="tests/host-1",
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        schema_version=options.schema_version,
        key=_resolve_key(payload, options.key_field),
    )
    envelope.payload.Pack(payload)

    received = Envelope.FromString(envelope.SerializeToString())
    payload_class = symbol_database.Default().GetSymbol(received.type)
    unpacked = payload_class()

    assert received.payload.Is(descriptor)
    assert received.payload.Unpack(unpacked)
    assert unpacked == payload
    assert received.key == _resolve_key(unpacked, options.key_field) != ""
    assert received == envelope


def test_an_envelope_refuses_to_unpack_into_another_event() -> None:
    first, second = EVENTS[0], EVENTS[1]
    packed = any_pb2.Any()
    packed.Pack(_fill(message_factory.GetMessageClass(first)()))

    assert not packed.Unpack(message_factory.GetMessageClass(second)())


# The Open Inference Protocol as KServe's grpc_predict_v2.proto numbers it: what a
# KServe, Triton or MLServer client puts on the wire.
OIP_FIELDS = {
    "ServerLiveResponse": {"live": 1},
    "ServerReadyResponse": {"ready": 1},
    "ModelReadyRequest": {"name": 1, "version": 2},
    "ModelReadyResponse": {"ready": 1},
    "ServerMetadataResponse": {"name": 1, "version": 2, "extensions": 3},
    "ModelMetadataRequest": {"name": 1, "version": 2},
    "ModelMetadataResponse": {
        "name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5,
    },
    "ModelMetadataResponse.TensorMetadata": {"name": 1, "datatype": 2, "shape": 3},
    "ModelInferRequest": {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5,
        "outputs": 6, "raw_input_contents": 7,
    },
    "ModelInferRequest.InferInputTensor": {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    },
    "ModelInferRequest.InferRequestedOutputTensor": {"name": 1, "parameters": 2},
    "ModelInferResponse": {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
        "raw_output_contents": 6,
    },
    "ModelInferResponse.InferOutputTensor": {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    },
    "InferParameter": {"bool_param": 1, "int64_param": 2, "string_param": 3},
    "InferTensorContents": {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4,
        "uint64_contents": 5, "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8,
    },
}  # fmt: skip

OIP_METHODS = {
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
}  # fmt: skip


def test_oip_service_has_the_name_and_methods_kserve_clients_call() -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == OIP_METHODS
    for method in service.methods:
        assert method.input_type.full_name == f"inference.{method.name}Request"
        assert method.output_type.full_name == f"inference.{method.name}Response"
        assert not method.client_streaming
        assert not method.server_streaming


class _RecordingChannel:
    """Stands in for a grpc channel and records the method paths a stub asks for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> None:
        self.paths.append(path)


def test_oip_stub_calls_the_paths_of_the_standard() -> None:
    channel = _RecordingChannel()

    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

    assert set(channel.paths) == {f"/inference.GRPCInferenceService/{m}" for m in OIP_METHODS}


@pytest.mark.parametrize("message_name", sorted(OIP_FIELDS))
def test_oip_field_numbers_match_the_standard(message_name: str) -> None:
    descriptor = grpc_service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{message_name}")

    numbers = {field.name: field.number for field in descriptor.fields}

    assert numbers.items() >= OIP_FIELDS[message_name].items()


def test_generated_code_matches_the_protos() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert check.returncode == 0, check.stderr
