"""The registry keeps ONNX models and refuses every file that could run code on load.

Each file here is built for real: pickles with the pickle module, a torch-style
zip, gzip/zlib wrappers, ONNX models with onnx.helper.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from strata.registry.domain.formats import (
    OnnxModel,
    Tensor,
    UnsafeFileError,
    read_onnx_model,
    refuse_code_formats,
)

PAYLOAD = {"weights": [0.5, 1.5], "bias": 2.0}


def tiny_onnx(*, external: str | None = None) -> bytes:
    """y = x @ W + b for x of shape [batch, 2]; W optionally in external data."""
    weights = numpy_helper.from_array(np.array([[0.5], [1.5]], dtype=np.float32), "W")
    if external is not None:
        set_external_data(weights, location=external)
        weights.ClearField("raw_data")
    bias = helper.make_tensor("b", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights, bias],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests"
    )
    model.ir_version = 8
    return model.SerializeToString()


def _read_onnx(folder: Path, data: bytes, name: str) -> OnnxModel:
    """read_onnx_model on ``data`` saved as a file, as an upload is before it is read."""
    path = folder / "artifact"
    path.write_bytes(data)
    return read_onnx_model(path, name)


def torch_like_zip() -> bytes:
    """The layout torch.save has used since 1.6: a zip with archive/data.pkl inside."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(PAYLOAD, protocol=2))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\x00" * 8)
    return buffer.getvalue()


def zip_with_hidden_pickle() -> bytes:
    """A zip whose member has an innocent name but pickle bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights.bin", pickle.dumps(PAYLOAD, protocol=4))
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", range(6))
def test_a_pickle_of_any_protocol_is_refused_whatever_its_name(
    protocol: int, tmp_path: Path
) -> None:
    data = pickle.dumps(PAYLOAD, protocol=protocol)
    with pytest.raises(UnsafeFileError, match=r"'model\.onnx' is a Python pickle") as caught:
        _read_onnx(tmp_path, data, "model.onnx")
    assert caught.value.field == "chunk"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (gzip.compress(pickle.dumps(PAYLOAD, protocol=4)), "gzip-compressed a Python pickle"),
        (zlib.compress(pickle.dumps(PAYLOAD, protocol=4)), "zlib-compressed a Python pickle"),
        (torch_like_zip(), "a zip holding the pickle 'archive/data.pkl'"),
        (zip_with_hidden_pickle(), "a zip holding the pickle 'weights.bin'"),
    ],
    ids=["gzip-pickle", "joblib-zlib", "torch-zip", "zip-hidden-pickle"],
)
def test_formats_wrapping_a_pickle_are_refused_with_the_reason(
    data: bytes, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsafeFileError, match=reason):
        _read_onnx(tmp_path, data, "model.onnx")
    with pytest.raises(UnsafeFileError, match=reason):
        refuse_code_formats(io.BytesIO(data), "report.csv")


def test_a_tiny_onnx_model_is_accepted_with_its_signature(tmp_path: Path) -> None:
    model = _read_onnx(tmp_path, tiny_onnx(), "model.onnx")
    assert model.inputs == (Tensor("x", "FP32", (-1, 2)),)
    assert model.outputs == (Tensor("y", "FP32", (-1, 1)),)
    assert model.opsets == {"": 17}
    assert model.ir_version == 8
    assert model.producer_name == "tests"


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("../x", r"points outside the model's folder \('\.\.'\)"),
        ("data/../../x", r"points outside the model's folder"),
        ("/etc/passwd", "is an absolute path"),
        ("C:\\Windows\\win.ini", "is an absolute path"),
    ],
)
def test_onnx_with_external_data_outside_its_folder_is_refused(
    location: str, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsafeFileError, match=reason) as caught:
        _read_onnx(tmp_path, tiny_onnx(external=location), "model.onnx")
    assert repr(location) in str(caught.value)


def test_onnx_with_external_data_in_its_folder_is_refused_as_not_single_file(
    tmp_path: Path,
) -> None:
    with pytest.raises(UnsafeFileError, match="single-file models only"):
        _read_onnx(tmp_path, tiny_onnx(external="weights.bin"), "model.onnx")


@pytest.mark.parametrize(
    "data",
    [b"", b"not a model at all", b"a.", b"accuracy,0.93\n"],
    ids=["empty", "text", "two-opcodes", "csv"],
)
def test_a_file_that_is_not_onnx_is_refused_as_such(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError, match=r"is not (an|a valid) ONNX model"):
        _read_onnx(tmp_path, data, "model.onnx")


@pytest.mark.parametrize(
    "data",
    [b"accuracy,0.93\nrecall,0.8\n", gzip.compress(b"x,y\n1,2\n"), b'{"auc": 0.9}', tiny_onnx()],
    ids=["csv", "gzip-csv", "json", "onnx"],
)
def test_reports_and_data_that_hold_no_pickle_pass(data: bytes) -> None:
    refuse_code_formats(io.BytesIO(data), "report")


def test_the_onnx_file_was_never_handed_to_anything_that_unpickles(tmp_path: Path) -> None:
    """onnx parses protobuf; a pickle inside an ONNX string field stays inert data."""
    model = onnx.load_model_from_string(tiny_onnx())
    model.doc_string = pickle.dumps(PAYLOAD).hex()
    assert _read_onnx(tmp_path, model.SerializeToString(), "m.onnx").outputs
