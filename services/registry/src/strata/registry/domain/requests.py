"""What a valid registry request is: names, digests, pages, versions.

Each check raises InvalidArgumentError naming the request field as a caller
writes it (``header.sha256``, ``artifact_sha256s[1]``) and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.errors import InvalidArgumentError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""Model and alias names: lower-case letters, digits, '-' and '_', at most 63 characters."""

SHA256 = re.compile(r"[0-9a-f]{64}")
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_CHUNK = 1024 * 1024
"""Largest chunk an upload message may carry, as the contract says."""


def check_name(value: str, field: str, what: str = "model name") -> str:
    if not NAME.fullmatch(value):
        raise InvalidArgumentError(
            field,
            f"{what} {value!r} must be 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit",
        )
    return value


def check_sha256(value: str, field: str) -> str:
    if not SHA256.fullmatch(value):
        raise InvalidArgumentError(field, f"expected 64 lower-case hex digits, got {value!r}")
    return value


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0 or value > MAX_PAGE:
        raise InvalidArgumentError(
            field, f"expected 0 (default {DEFAULT_PAGE}) to {MAX_PAGE}, got {value}"
        )
    return value or DEFAULT_PAGE


def page_after(token: str, field: str = "page_token") -> int | None:
    """The position a numeric page token resumes after; None for the first page."""
    if not token:
        return None
    if not token.isdigit():
        raise InvalidArgumentError(
            field, f"expected a next_page_token from a previous page, got {token!r}"
        )
    return int(token)


def check_header(header: pb.ArtifactHeader) -> pb.ArtifactHeader:
    """Raise unless ``header`` announces an upload the registry can take."""
    check_name(header.model_name, "header.model_name")
    if not header.name or "/" in header.name or "\\" in header.name:
        raise InvalidArgumentError(
            "header.name", f"expected a file name without '/', got {header.name!r}"
        )
    if header.kind == pb.ARTIFACT_KIND_UNSPECIFIED or header.kind not in pb.ArtifactKind.values():
        names = pb.ArtifactKind.keys()
        kinds = ", ".join(k for k in names if k != "ARTIFACT_KIND_UNSPECIFIED")
        raise InvalidArgumentError("header.kind", f"expected one of {kinds}, got {header.kind}")
    if header.size_bytes < 0:
        raise InvalidArgumentError(
            "header.size_bytes", f"expected a size >= 0, got {header.size_bytes}"
        )
    check_sha256(header.sha256, "header.sha256")
    if header.upload_id and not UPLOAD_ID.fullmatch(header.upload_id):
        raise InvalidArgumentError(
            "header.upload_id",
            f"expected 1-64 letters, digits, '-' or '_', got {header.upload_id!r}",
        )
    if header.offset < 0 or header.offset > header.size_bytes:
        raise InvalidArgumentError(
            "header.offset", f"expected 0 to size_bytes ({header.size_bytes}), got {header.offset}"
        )
    if header.offset and not header.upload_id:
        raise InvalidArgumentError(
            "header.offset", "only a resumed upload (with upload_id) starts past 0"
        )
    return header


def same_file(stored: pb.ArtifactHeader, resumed: pb.ArtifactHeader) -> bool:
    """Whether a resuming header announces the file its upload started with."""
    fields = ("model_name", "name", "kind", "media_type", "size_bytes", "sha256")
    return all(getattr(stored, f) == getattr(resumed, f) for f in fields)


def onnx_artifact(request: pb.RegisterVersionRequest, kinds: Sequence[int]) -> str:
    """The SHA-256 of the version's one ONNX model, given each listed artifact's kind."""
    models = [
        sha
        for sha, kind in zip(request.artifact_sha256s, kinds, strict=True)
        if kind == pb.ARTIFACT_KIND_ONNX_MODEL
    ]
    if len(models) != 1:
        raise InvalidArgumentError(
            "artifact_sha256s",
            f"expected exactly one ARTIFACT_KIND_ONNX_MODEL artifact, got {len(models)}",
        )
    return models[0]


def check_register(request: pb.RegisterVersionRequest) -> pb.RegisterVersionRequest:
    """Raise unless ``request`` is a well-formed version (artifacts are checked by the store)."""
    check_name(request.model_name, "model_name")
    if not request.artifact_sha256s:
        raise InvalidArgumentError("artifact_sha256s", "expected the uploaded artifacts, got none")
    seen: set[str] = set()
    for i, sha in enumerate(request.artifact_sha256s):
        check_sha256(sha, f"artifact_sha256s[{i}]")
        if sha in seen:
            raise InvalidArgumentError(f"artifact_sha256s[{i}]", f"{sha} is listed twice")
        seen.add(sha)
    for i, curve in enumerate(request.curves):
        if not curve.name:
            raise InvalidArgumentError(f"curves[{i}].name", "expected a curve name")
        if len(curve.x) != len(curve.y):
            raise InvalidArgumentError(
                f"curves[{i}].y",
                f"expected as many values as x ({len(curve.x)}), got {len(curve.y)}",
            )
    if request.generation.experiment_count < 0:
        raise InvalidArgumentError(
            "generation.experiment_count",
            f"expected a count >= 0, got {request.generation.experiment_count}",
        )
    sha = request.lineage.training_set_sha256
    if sha:
        check_sha256(sha, "lineage.training_set_sha256")
    for i, binding in enumerate(request.feature_bindings):
        if not binding.input:
            raise InvalidArgumentError(
                f"feature_bindings[{i}].input", "expected an input tensor name"
            )
    return request


def check_bindings(request: pb.RegisterVersionRequest, inputs: Sequence[str]) -> None:
    """Each feature binding must fill an input the ONNX model has."""
    for i, binding in enumerate(request.feature_bindings):
        if binding.input not in inputs:
            raise InvalidArgumentError(
                f"feature_bindings[{i}].input",
                f"the model has no input {binding.input!r}; its inputs are {list(inputs)}",
            )
