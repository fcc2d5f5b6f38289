"""Registry requests are checked field by field, and a version takes its signature from ONNX."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.registry.domain.formats import OnnxModel, Tensor
from strata.registry.domain.requests import (
    check_bindings,
    check_header,
    check_register,
    onnx_artifact,
    page_after,
    page_size,
    same_file,
)
from strata.registry.domain.versions import new_version

SHA = "ab" * 32


def header(**fields: object) -> pb.ArtifactHeader:
    base: dict[str, object] = {
        "model_name": "eta",
        "name": "model.onnx",
        "kind": pb.ARTIFACT_KIND_ONNX_MODEL,
        "size_bytes": 10,
        "sha256": SHA,
    }
    return pb.ArtifactHeader(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_name": "Eta!"}, "header.model_name"),
        ({"name": "../model.onnx"}, "header.name"),
        ({"name": ""}, "header.name"),
        ({"kind": pb.ARTIFACT_KIND_UNSPECIFIED}, "header.kind"),
        ({"size_bytes": -1}, "header.size_bytes"),
        ({"sha256": "AB" * 32}, "header.sha256"),
        ({"sha256": "ab"}, "header.sha256"),
        ({"upload_id": "a/b"}, "header.upload_id"),
        ({"upload_id": "u1", "offset": 11}, "header.offset"),
        ({"offset": 4}, "header.offset"),
    ],
)
def test_a_bad_upload_header_is_refused_naming_its_field(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_header(header(**fields))
    assert caught.value.field == field


def test_a_good_header_passes_and_a_resume_must_announce_the_same_file() -> None:
    started = check_header(header(upload_id="u1"))
    assert same_file(started, header(upload_id="u1", offset=4))
    assert not same_file(started, header(upload_id="u1", sha256="cd" * 32))


def test_page_bounds_and_tokens() -> None:
    assert page_size(0) == 100
    assert page_size(5) == 5
    assert page_after("") is None
    assert page_after("42") == 42
    with pytest.raises(InvalidArgumentError, match="page_size"):
        page_size(1001)
    with pytest.raises(InvalidArgumentError, match="page_token"):
        page_after("abc")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RegisterVersionRequest(model_name="eta"), "artifact_sha256s"),
        (
            pb.RegisterVersionRequest(model_name="eta", artifact_sha256s=["x"]),
            "artifact_sha256s[0]",
        ),
        (
            pb.RegisterVersionRequest(model_name="eta", artifact_sha256s=[SHA, SHA]),
            "artifact_sha256s[1]",
        ),
        (
            pb.RegisterVersionRequest(
                model_name="eta", artifact_sha256s=[SHA], curves=[pb.Curve(name="roc", x=[1.0])]
            ),
            "curves[0].y",
        ),
        (
            pb.RegisterVersionRequest(
                model_name="eta",
                artifact_sha256s=[SHA],
                generation=pb.GenerationCode(experiment_count=-1),
            ),
            "generation.experiment_count",
        ),
        (
            pb.RegisterVersionRequest(
                model_name="eta",
                artifact_sha256s=[SHA],
                lineage=pb.Lineage(training_set_sha256="nope"),
            ),
            "lineage.training_set_sha256",
        ),
    ],
)
def test_a_bad_version_is_refused_naming_its_field(
    request_: pb.RegisterVersionRequest, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_register(request_)
    assert caught.value.field == field


def test_a_version_has_exactly_one_onnx_model_and_bindings_name_its_inputs() -> None:
    other = "cd" * 32
    request = pb.RegisterVersionRequest(
        model_name="eta",
        artifact_sha256s=[SHA, other],
        feature_bindings=[pb.FeatureBinding(input="z", features=["v:f"])],
    )
    onnx, report = pb.ARTIFACT_KIND_ONNX_MODEL, pb.ARTIFACT_KIND_REPORT
    assert onnx_artifact(request, [report, onnx]) == other
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        onnx_artifact(request, [onnx, onnx])
    with pytest.raises(InvalidArgumentError, match="no input 'z'") as caught:
        check_bindings(request, ["x"])
    assert caught.value.field == "feature_bindings[0].input"


def test_a_new_version_takes_signature_and_format_from_the_onnx_file() -> None:
    request = pb.RegisterVersionRequest(
        model_name="eta",
        artifact_sha256s=[SHA],
        definition=pb.ModelDefinition(
            model_class="LinearRegression", onnx_ir_version=99, producer_name="lies"
        ),
        task="regression",
    )
    onnx = OnnxModel(
        inputs=(Tensor("x", "FP32", (-1, 2)),),
        outputs=(Tensor("y", "FP32", (-1, 1)),),
        ir_version=8,
        opsets={"": 17},
        producer_name="skl2onnx",
        producer_version="1.17",
    )
    version = new_version(
        request,
        number=3,
        artifacts=[pb.Artifact(sha256=SHA)],
        onnx=onnx,
        model_owner="eta-team",
        principal="ci",
        now=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert version.version == 3
    assert version.signature.inputs[0] == pb.TensorSpec(name="x", datatype="FP32", shape=[-1, 2])
    assert version.definition.model_class == "LinearRegression"
    assert (version.definition.onnx_ir_version, version.definition.producer_name) == (8, "skl2onnx")
    assert dict(version.definition.onnx_opsets) == {"": 17}
    assert (version.owner, version.task, version.created_by) == ("eta-team", "regression", "ci")
