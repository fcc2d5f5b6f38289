"""Which uploaded files the registry keeps: ONNX models, and nothing that runs code on load.

A pickle executes whatever its author wrote the moment it is loaded, and so do the
files built on it: joblib dumps, PyTorch checkpoints (a zip holding ``data.pkl``)
and compressed pickles. The registry recognises them by their bytes, never by
their names, and refuses them. An ONNX model is parsed with the ``onnx`` package
(protobuf only, nothing is unpickled); its external-data references are refused,
because a location such as ``../../etc/passwd`` makes a loader read any file the
server can (the class of CVE-2024-27318).

The code-format sniffing reads a file object it is handed, and only its first bytes
(a zip's directory). An ONNX model is read from its path: the ONNX checker then loads
the file itself in C++, after the Python copy is dropped, so a file is in memory at
most about twice (measured: a 100 MiB model peaks at 200 MiB over the process's
baseline, against 304 MiB when the checker is handed the parsed model, which it
serializes again). The upload's size limit per kind bounds the rest.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from strata.core.errors import InvalidArgumentError

_PROTO = 0x80
"""The PROTO opcode that starts every pickle of protocol 2 and later."""

_SNIFF_BYTES = 64 * 1024
"""Bytes decompressed from a compressed file to see what it holds."""

_MAX_ZIP_MEMBERS = 10_000
"""Members of a zip looked at; a zip with more is refused as too large to check."""

_PICKLE_NAMES = (".pkl", ".pickle", ".joblib", ".pt", ".pth")

_DATATYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}
"""ONNX element types by their Open Inference Protocol names."""


class UnsafeFileError(InvalidArgumentError):
    """An uploaded file is refused; the message names the file and says why."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of an ONNX graph: OIP datatype ("" if not a tensor), -1 = any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class OnnxModel:
    """What the registry reads from an ONNX file: its signature and format versions."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    ir_version: int
    opsets: dict[str, int] = field(default_factory=dict)
    producer_name: str = ""
    producer_version: str = ""


def refuse_code_formats(file: BinaryIO, name: str, field_name: str = "chunk") -> None:
    """Raise UnsafeFileError if ``file`` is a pickle or a format that wraps one.

    ``file`` must be seekable; it is read from its start and left at its start.
    """
    reason = _code_format(file)
    file.seek(0)
    if reason:
        raise UnsafeFileError(
            field_name,
            f"{name!r} is {reason}: it could run code when loaded, and the registry "
            "only keeps ONNX models (export the model to ONNX)",
        )


def read_onnx_model(path: Path, name: str, field_name: str = "chunk") -> OnnxModel:
    """Parse the file at ``path`` as an ONNX model and return its signature; refuse
    anything else.

    Code formats are refused first, with their own reason, whatever ``name`` says.
    """
    with path.open("rb") as file:
        refuse_code_formats(file, name, field_name)
    try:
        model = onnx.load_model(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UnsafeFileError(field_name, f"{name!r} is not an ONNX model: {exc}") from None
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise UnsafeFileError(
            field_name,
            f"{name!r} is not an ONNX model: it has no graph, IR version or opset",
        )
    _refuse_external_data(model, name, field_name)
    summary = _summary(model)
    del model  # the checker loads its own copy from the path
    try:
        onnx.checker.check_model(path)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsafeFileError(field_name, f"{name!r} is not a valid ONNX model: {first}") from None
    return summary


def _code_format(file: BinaryIO, depth: int = 0) -> str | None:
    file.seek(0)
    head = file.read(_SNIFF_BYTES)
    if not head:
        return None
    if head[0] == _PROTO and len(head) > 1 and 2 <= head[1] <= 5:
        return f"a Python pickle (protocol {head[1]}; joblib and old PyTorch files are pickles)"
    if zipfile.is_zipfile(file):
        return _zip_code_format(file)
    inner = _decompressed_head(head)
    if inner is not None:
        kind, data = inner
        within = _code_format(io.BytesIO(data), depth + 1) if depth < 2 else None
        return f"{kind}-compressed {within}" if within else None
    if _is_text_pickle(file):
        return "a Python pickle (protocol 0 or 1)"
    return None


def _zip_code_format(file: BinaryIO) -> str | None:
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            if len(members) > _MAX_ZIP_MEMBERS:
                return f"a zip of {len(members)} files, too many to check"
            for member in members:
                if member.filename.lower().endswith(_PICKLE_NAMES):
                    return f"a zip holding the pickle {member.filename!r} (a PyTorch checkpoint)"
                with archive.open(member) as stream:
                    start = stream.read(2)
                if len(start) == 2 and start[0] == _PROTO and 2 <= start[1] <= 5:
                    return f"a zip holding the pickle {member.filename!r}"
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        return f"a zip that cannot be checked ({exc})"
    return None


def _decompressed_head(head: bytes) -> tuple[str, bytes] | None:
    """The first bytes a compressed ``head`` holds, with the compression's name."""
    try:
        if head.startswith(b"\x1f\x8b"):
            return "gzip", _partial(gzip.GzipFile(fileobj=io.BytesIO(head)))
        if head.startswith(b"BZh"):
            return "bzip2", bz2.BZ2Decompressor().decompress(head, _SNIFF_BYTES)
        if head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00")):
            return "xz/lzma", lzma.LZMADecompressor().decompress(head, _SNIFF_BYTES)
        if len(head) > 1 and head[0] & 0x0F == 8 and (head[0] * 256 + head[1]) % 31 == 0:
            return "zlib", zlib.decompressobj().decompress(head, _SNIFF_BYTES)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
        return None
    return None


def _partial(stream: gzip.GzipFile) -> bytes:
    """Read what a truncated gzip stream yields; its end is cut off on purpose."""
    out = bytearray()
    try:
        while len(out) < _SNIFF_BYTES and (chunk := stream.read(4096)):
            out += chunk
    except EOFError:
        pass
    return bytes(out)


_TEXT_PICKLE_STARTS = b"(c]}ILFSVNpgd"
"""Opcodes a protocol 0/1 pickle begins with (MARK, GLOBAL, EMPTY_LIST, EMPTY_DICT, INT,
LONG, FLOAT, STRING, UNICODE, NONE, PUT, GET, DICT); an ONNX file starts with a
protobuf tag byte, none of these."""


def _is_text_pickle(file: BinaryIO) -> bool:
    """Whether ``file`` looks like a protocol 0/1 pickle: a pickle opcode first, STOP last.

    Read from its bytes alone, never with a pickle module: nothing here parses or
    runs pickle opcodes. A file that is not ONNX is refused anyway; this only names
    what it is.
    """
    file.seek(0)
    first = file.read(1)
    file.seek(-1, io.SEEK_END)
    last = file.read(1)
    return bool(first) and first in _TEXT_PICKLE_STARTS and last == b"."


def _refuse_external_data(model: onnx.ModelProto, name: str, field_name: str) -> None:
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        raise UnsafeFileError(
            field_name,
            f"{name!r} keeps tensor {tensor.name!r} in external data at {location!r}, "
            f"which {_location_problem(location)}; save the model with its tensors "
            "inside the file",
        )


def _location_problem(location: str) -> str:
    parts = location.replace("\\", "/").split("/")
    if location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        return "is an absolute path, outside the model's folder"
    if ".." in parts:
        return "points outside the model's folder ('..')"
    return "the registry does not accept (it stores single-file models only)"


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found: list[onnx.TensorProto] = []
    graphs = [model.graph, *(g for f in model.functions for g in _function_graphs(f))]
    while graphs:
        graph = graphs.pop()
        found.extend(graph.initializer)
        for sparse in graph.sparse_initializer:
            found.extend((sparse.values, sparse.indices))
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    found.append(attribute.t)
                found.extend(attribute.tensors)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return found


def _function_graphs(function: onnx.FunctionProto) -> list[onnx.GraphProto]:
    return [
        attribute.g
        for node in function.node
        for attribute in node.attribute
        if attribute.HasField("g")
    ]


def _summary(model: onnx.ModelProto) -> OnnxModel:
    initialized = {tensor.name for tensor in model.graph.initializer}
    return OnnxModel(
        inputs=tuple(_tensor(v) for v in model.graph.input if v.name not in initialized),
        outputs=tuple(_tensor(v) for v in model.graph.output),
        ir_version=model.ir_version,
        opsets={opset.domain: opset.version for opset in model.opset_import},
        producer_name=model.producer_name,
        producer_version=model.producer_version,
    )


def _tensor(value: onnx.ValueInfoProto) -> Tensor:
    if not value.type.HasField("tensor_type"):
        return Tensor(value.name, "", ())
    tensor = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return Tensor(value.name, _DATATYPES.get(tensor.elem_type, ""), shape)
