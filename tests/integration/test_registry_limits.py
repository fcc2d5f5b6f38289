"""Artifact size limits per kind, on ``python -m strata.registry`` with the test stack's S3.

The registry here allows ONNX models of 600 bytes and reports of 2000: small enough
to test with a tiny model and a few CSV rows. What an operator relies on: an upload
over its kind's limit is refused from its header, naming the limit and the size, and
nothing of it is stored; each kind has its own limit.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from test_registry_service import (
    _client,
    _create,
    _header,
    _messages,
    _refusal,
    _running,
    _stream,
    _upload,
    sample_rows,
    tiny_onnx,
)

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.settings import AuthSettings, load

pytestmark = pytest.mark.integration

ONNX_LIMIT = 600
REPORT_LIMIT = 2000


@pytest.fixture(scope="module")
async def registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ModelRegistryServiceStub]:
    folder = tmp_path_factory.mktemp("registry-limits")
    async with (
        _running(
            folder,
            STRATA_REGISTRY_MAX_ONNX_MODEL_BYTES=str(ONNX_LIMIT),
            STRATA_REGISTRY_MAX_REPORT_BYTES=str(REPORT_LIMIT),
        ) as port,
        _client(port, load(AuthSettings)) as stub,
    ):
        yield stub


async def test_an_upload_over_its_kinds_limit_is_refused_naming_the_limit_and_the_size(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = sample_rows(REPORT_LIMIT + 1)
    upload_id = uuid.uuid4().hex
    header = _header(model, "rows.csv", pb.ARTIFACT_KIND_REPORT, data, upload_id=upload_id)

    code, message, fields = await _refusal(
        registry.UploadArtifact(_stream(_messages(header, data)))
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.size_bytes" in fields
    assert f"{REPORT_LIMIT + 1} bytes" in message
    assert f"at most {REPORT_LIMIT} bytes" in message
    assert "STRATA_REGISTRY_MAX_REPORT_BYTES" in message
    # Refused from the header: no upload was started, so none can be resumed.
    code, _, _ = await _refusal(
        registry.GetUpload(pb.GetUploadRequest(model_name=model, upload_id=upload_id))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_each_kind_has_its_own_limit_and_a_file_at_the_limit_is_kept(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    report = sample_rows(REPORT_LIMIT)
    kept = await _upload(registry, model, "rows.csv", pb.ARTIFACT_KIND_REPORT, report)
    assert kept.size_bytes == REPORT_LIMIT

    # Within a report's limit, over a model's: refused as a model for its size, before
    # its bytes are looked at.
    data = sample_rows(ONNX_LIMIT + 1)
    await _upload(registry, model, "small.csv", pb.ARTIFACT_KIND_REPORT, data)
    header = _header(model, "model.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, data)
    code, message, fields = await _refusal(
        registry.UploadArtifact(_stream(_messages(header, data)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.size_bytes" in fields
    assert f"{ONNX_LIMIT + 1} bytes" in message
    assert f"at most {ONNX_LIMIT} bytes" in message

    onnx = tiny_onnx()
    assert len(onnx) <= ONNX_LIMIT
    stored = await _upload(registry, model, "model.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, onnx)
    assert stored.size_bytes == len(onnx)


async def test_bytes_past_the_announced_size_are_refused_so_the_limit_cannot_be_dodged(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = sample_rows(REPORT_LIMIT * 2)
    header = _header(model, "rows.csv", pb.ARTIFACT_KIND_REPORT, data[:100])

    code, message, fields = await _refusal(
        registry.UploadArtifact(_stream(_messages(header, data, chunk=500)))
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk" in fields
    assert "size_bytes (100)" in message
