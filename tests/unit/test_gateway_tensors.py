"""OIP tensors to numpy and back, checked against the model's signature."""

from __future__ import annotations

import numpy as np
import pytest

from strata.api.inference import grpc_service_pb2 as oip
from strata.core.errors import InvalidArgumentError
from strata.gateway.tensors import decode_inputs, encode_outputs
from strata.transforms.featurize import Array, TensorSpec

X = TensorSpec("x", "FP32", (-1, 2))


def _request(
    *tensors: oip.ModelInferRequest.InferInputTensor, raw: list[bytes] | None = None
) -> oip.ModelInferRequest:
    return oip.ModelInferRequest(model_name="m", inputs=tensors, raw_input_contents=raw or [])


def _x(
    shape: list[int], values: list[float], datatype: str = "FP32"
) -> oip.ModelInferRequest.InferInputTensor:
    return oip.ModelInferRequest.InferInputTensor(
        name="x",
        datatype=datatype,
        shape=shape,
        contents=oip.InferTensorContents(fp32_contents=values),
    )


def _refusal(
    request: oip.ModelInferRequest, specs: tuple[TensorSpec, ...] = (X,)
) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        decode_inputs(request, specs)
    return caught.value


def test_typed_contents_become_an_array_of_the_declared_shape() -> None:
    arrays = decode_inputs(_request(_x([2, 2], [1, 2, 3, 4])), (X,))
    np.testing.assert_array_equal(arrays["x"], np.array([[1, 2], [3, 4]], dtype=np.float32))
    assert arrays["x"].dtype == np.float32


def test_raw_contents_become_the_same_array() -> None:
    data = np.array([[1, 2], [3, 4]], dtype=np.float32)
    tensor = oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 2])
    arrays = decode_inputs(_request(tensor, raw=[data.tobytes()]), (X,))
    np.testing.assert_array_equal(arrays["x"], data)


def test_a_wrong_shape_names_the_input_and_both_shapes() -> None:
    error = _refusal(_request(_x([2, 3], [0.0] * 6)))
    assert error.field == "inputs[0].shape"
    assert "'x'" in str(error)
    assert "[2, 3]" in str(error)
    assert "[-1, 2]" in str(error)


def test_a_wrong_rank_is_refused() -> None:
    assert _refusal(_request(_x([4], [0.0] * 4))).field == "inputs[0].shape"


def test_a_wrong_datatype_names_the_input_and_both_datatypes() -> None:
    error = _refusal(_request(_x([1, 2], [0.0, 0.0], datatype="FP64")))
    assert error.field == "inputs[0].datatype"
    assert "'x'" in str(error)
    assert "FP64" in str(error)
    assert "FP32" in str(error)


def test_values_that_do_not_fill_the_shape_are_refused() -> None:
    error = _refusal(_request(_x([2, 2], [1.0, 2.0, 3.0])))
    assert error.field == "inputs[0].contents"
    assert "3 values" in str(error)


def test_raw_bytes_that_are_not_whole_values_are_refused() -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])
    assert _refusal(_request(tensor, raw=[b"\x00" * 7])).field == "raw_input_contents[0]"


def test_an_unknown_and_a_missing_input_are_named() -> None:
    unknown = oip.ModelInferRequest.InferInputTensor(name="z", datatype="FP32", shape=[1, 2])
    error = _refusal(_request(unknown))
    assert error.field == "inputs[0].name"
    assert "'z'" in str(error)
    error = _refusal(_request(_x([1, 2], [0.0, 0.0])), (X, TensorSpec("w", "INT64", (-1,))))
    assert error.field == "inputs"
    assert "'w'" in str(error)


def test_outputs_answer_in_the_encoding_of_the_request() -> None:
    y = TensorSpec("y", "FP32", (-1, 1))
    result = {"y": np.array([[6.0], [9.0]], dtype=np.float32)}
    tensors, raw = encode_outputs(result, (y,), raw=False)
    assert (tensors[0].name, tensors[0].datatype, list(tensors[0].shape)) == ("y", "FP32", [2, 1])
    assert list(tensors[0].contents.fp32_contents) == [6.0, 9.0]
    assert raw == []
    tensors, raw = encode_outputs(result, (y,), raw=True)
    assert not tensors[0].contents.fp32_contents
    np.testing.assert_array_equal(np.frombuffer(raw[0], dtype=np.float32), [6.0, 9.0])


def test_an_fp16_output_makes_the_whole_answer_raw() -> None:
    specs = (TensorSpec("a", "FP32", (1,)), TensorSpec("b", "FP16", (1,)))
    result: dict[str, Array] = {
        "a": np.array([1.0], np.float32),
        "b": np.array([2.0], np.float16),
    }
    tensors, raw = encode_outputs(result, specs, raw=False)
    assert len(raw) == 2
    assert not tensors[0].contents.fp32_contents
