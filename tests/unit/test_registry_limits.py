"""Artifact size limits per kind: refused from the header, naming the limit and the size."""

from __future__ import annotations

import pytest

from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.registry.domain.limits import SizeLimits
from strata.registry.settings import RegistrySettings

LIMITS = SizeLimits(onnx_model=100, report=10, data_sample=1000)


def _header(kind: int, size: int) -> pb.ArtifactHeader:
    return pb.ArtifactHeader(name="f", kind=kind, size_bytes=size)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "limit", "setting"),
    [
        (pb.ARTIFACT_KIND_ONNX_MODEL, 100, "STRATA_REGISTRY_MAX_ONNX_MODEL_BYTES"),
        (pb.ARTIFACT_KIND_REPORT, 10, "STRATA_REGISTRY_MAX_REPORT_BYTES"),
        (pb.ARTIFACT_KIND_DATA_SAMPLE, 1000, "STRATA_REGISTRY_MAX_DATA_SAMPLE_BYTES"),
    ],
)
def test_each_kind_takes_up_to_its_own_limit(kind: int, limit: int, setting: str) -> None:
    LIMITS.check(_header(kind, limit))
    with pytest.raises(InvalidArgumentError) as caught:
        LIMITS.check(_header(kind, limit + 1))
    assert caught.value.field == "header.size_bytes"
    assert f"is {limit + 1} bytes" in caught.value.message
    assert f"at most {limit} bytes" in caught.value.message
    assert setting in caught.value.message


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_REGISTRY_MAX_REPORT_BYTES", "4096")
    limits = RegistrySettings().limits()
    assert limits.report == 4096
    assert limits.onnx_model == 2 * 1024**3 - 1
