"""The REST bodies of OIP v2 to gRPC messages and back: JSON tensors and binary ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strata.api.inference import grpc_service_pb2 as oip
from strata.core.errors import InvalidArgumentError
from strata.gateway.rest_codec import Reply, decode_infer, encode_infer


def _body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_json_tensors_become_raw_bytes_of_their_datatype_nested_or_flat() -> None:
    body = _body(
        {
            "id": "r1",
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
                {"name": "n", "shape": [3], "datatype": "INT64", "data": [7, 8, 9]},
                {"name": "h", "shape": [1], "datatype": "FP16", "data": [0.5]},
            ],
        }
    )
    request, reply = decode_infer("eta", "3", body, None)
    assert (request.model_name, request.model_version, request.id) == ("eta", "3", "r1")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("x", "FP32", [2, 2]),
        ("n", "INT64", [3]),
        ("h", "FP16", [1]),
    ]
    x, n, h = request.raw_input_contents
    assert np.frombuffer(x, np.float32).tolist() == [1, 2, 3, 4.5]
    assert np.frombuffer(n, np.int64).tolist() == [7, 8, 9]
    assert np.frombuffer(h, np.float16).tolist() == [0.5]
    assert reply == Reply(None, {}, binary_by_default=False)


def test_binary_tensors_are_cut_from_the_bytes_after_the_json_header() -> None:
    a = np.array([1.0, 2.0], np.float32).tobytes()
    b = np.array([5, 6, 7], np.int32).tobytes()
    header = _body(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                },
                {"name": "j", "shape": [1], "datatype": "INT32", "data": [4]},
                {
                    "name": "b",
                    "shape": [3],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 12},
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    request, reply = decode_infer("eta", "", header + a + b, len(header))
    assert request.raw_input_contents[0] == a
    assert np.frombuffer(request.raw_input_contents[1], np.int32).tolist() == [4]
    assert request.raw_input_contents[2] == b
    assert reply.in_binary("anything")


def test_binary_sizes_must_account_for_every_byte_after_the_header() -> None:
    header = _body(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    )
    with pytest.raises(InvalidArgumentError) as short:
        decode_infer("eta", "", header + b"\0\0", len(header))
    assert short.value.field == "inputs[0].parameters.binary_data_size"
    with pytest.raises(InvalidArgumentError) as extra:
        decode_infer("eta", "", header + b"\0" * 6, len(header))
    assert extra.value.field == "Inference-Header-Content-Length"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "inputs[0].name"),
        (
            {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]},
            "inputs[0].shape",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            "inputs[0].datatype",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["one"]}]},
            "inputs[0].data",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "inputs[0].data"),
        ([1, 2], "body"),
        (
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": 3}],
            },
            "outputs[0].name",
        ),
    ],
)
def test_a_body_off_the_protocol_is_refused_naming_the_field(document: object, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        decode_infer("eta", "", _body(document), None)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("INT64", [1.5]), ("INT8", [300]), ("UINT32", [-1]), ("BOOL", [1]), ("FP32", [[1], [2, 3]])],
)
def test_values_a_cast_would_change_are_refused_naming_the_input(
    datatype: str, data: list[object]
) -> None:
    document = {"inputs": [{"name": "n", "shape": [1], "datatype": datatype, "data": data}]}
    with pytest.raises(InvalidArgumentError) as refused:
        decode_infer("eta", "", _body(document), None)
    assert refused.value.field == "inputs[0].data"
    assert "'n'" in refused.value.message


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        decode_infer("eta", "", b"{not json", None)
    assert refused.value.field == "body"


def _response() -> oip.ModelInferResponse:
    y = np.array([[2.0, 4.0]], np.float32)
    k = np.array([7], np.int64)
    return oip.ModelInferResponse(
        model_name="eta",
        model_version="2",
        id="r1",
        outputs=[
            oip.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[1, 2]),
            oip.ModelInferResponse.InferOutputTensor(name="k", datatype="INT64", shape=[1]),
        ],
        raw_output_contents=[y.tobytes(), k.tobytes()],
    )


def test_outputs_answer_as_json_data_by_default() -> None:
    content, header_length = encode_infer(_response(), Reply(None, {}, binary_by_default=False))
    assert header_length is None
    assert json.loads(content) == {
        "model_name": "eta",
        "model_version": "2",
        "id": "r1",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 4.0]},
            {"name": "k", "datatype": "INT64", "shape": [1], "data": [7]},
        ],
    }


def test_outputs_asked_in_binary_follow_the_json_header_in_the_order_asked() -> None:
    reply = Reply(("k", "y"), {"y": True}, binary_by_default=False)
    content, header_length = encode_infer(_response(), reply)
    assert header_length is not None
    header = json.loads(content[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["k", "y"]
    assert header["outputs"][0]["data"] == [7]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(content[header_length:], np.float32).tolist() == [2.0, 4.0]


def test_an_output_the_model_lacks_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        encode_infer(_response(), Reply(("y", "z"), {}, binary_by_default=False))
    assert refused.value.field == "outputs[1].name"
    assert "'z'" in refused.value.message
