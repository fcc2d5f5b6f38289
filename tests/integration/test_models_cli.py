"""``strata models list|show|promote|audit`` against a real ``python -m strata.registry``.

What a team relies on: ``show`` prints what the registry holds for the version a
reference names (the latest, ``NAME:VERSION`` or ``NAME@ALIAS``); ``promote`` moves
the alias in the registry (what the gateway serves) and says from where to where;
``audit`` lists every change with who, what and why; ``list`` shows each model's
latest version and aliases; every failure is one line on stderr naming what is
wrong (the model, the version, the alias, the reference), with exit code 1.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from onnx import TensorProto, helper
from service_processes import free_port, running
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]
from strata_cli import run_strata

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, load
from strata.sdk.models import log_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def registry_address(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    folder = tmp_path_factory.mktemp("models-cli")
    async with running("registry", folder, STRATA_BLOB_BACKEND="s3") as service:
        yield service.address


@pytest.fixture
async def registry(registry_address: str) -> AsyncIterator[ModelRegistryServiceStub]:
    async with channel(registry_address, load(AuthSettings), mode="development") as chan:
        yield ModelRegistryServiceStub(chan)


def _name() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def _times(factor: float) -> bytes:
    """An ONNX model computing y = x * factor, for x of shape [batch, 2]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "times",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("k", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


async def _model(registry: ModelRegistryServiceStub, versions: int) -> str:
    """A new model with ``versions`` versions and no alias."""
    name = _name()
    await registry.CreateModel(pb.CreateModelRequest(name=name, owner="eta-team"))
    for factor in range(2, versions + 2):
        onnx = _times(float(factor))
        header = pb.ArtifactHeader(
            model_name=name,
            name="model.onnx",
            kind=pb.ARTIFACT_KIND_ONNX_MODEL,
            media_type="application/onnx",
            size_bytes=len(onnx),
            sha256=hashlib.sha256(onnx).hexdigest(),
        )

        async def parts(
            header: pb.ArtifactHeader = header, onnx: bytes = onnx
        ) -> AsyncIterator[pb.UploadArtifactRequest]:
            yield pb.UploadArtifactRequest(header=header)
            yield pb.UploadArtifactRequest(chunk=onnx)

        await registry.UploadArtifact(parts())
        await registry.RegisterVersion(
            pb.RegisterVersionRequest(model_name=name, artifact_sha256s=[header.sha256])
        )
    return name


def _cells(row: str) -> list[str]:
    """The cells of one row of a table the CLI printed."""
    return [cell.strip() for cell in row.split("│")[1:-1]]


async def _strata(registry_address: str, *args: str) -> tuple[int, str, str]:
    """Run the ``strata`` CLI against the registry; exit code, stdout, stderr."""
    env = {
        **os.environ,
        "STRATA_SERVICE_REGISTRY_PORT": registry_address.rsplit(":", 1)[1],
        "COLUMNS": "250",
    }
    return await run_strata(*args, env=env)


async def test_show_prints_what_the_registry_holds_for_a_logged_version(
    registry_address: str, registry: ModelRegistryServiceStub
) -> None:
    name = _name()
    rows = np.random.default_rng(7).normal(size=(64, 3))
    model = GradientBoostingRegressor(n_estimators=5, random_state=0).fit(rows, rows[:, 0])
    logged = await log_model(
        model,
        name=name,
        sample=rows[:8],
        registry=registry,
        metrics={"rmse": 0.25},
        lineage=pb.Lineage(training_run_id="run-42"),
        owner="eta-team",
        task="regression",
    )

    code, out, err = await _strata(registry_address, "models", "show", name)

    assert (code, err) == (0, "")
    onnx = next(a for a in logged.artifacts if a.kind == pb.ARTIFACT_KIND_ONNX_MODEL)
    lines = out.splitlines()
    assert lines[0] == f"{name} version 1"
    assert "owner: eta-team; task: regression" in lines
    assert "metrics: rmse=0.25" in lines
    assert "data: training run run-42" in lines
    assert f"inputs: {logged.signature.inputs[0].name} FP32 [?, 3]" in lines
    assert any(line.startswith(f"definition: {logged.definition.model_class} (") for line in lines)
    assert any("n_estimators=5" in line for line in lines if line.startswith("params: "))
    assert onnx.sha256 in out


async def test_show_picks_the_version_or_alias_the_reference_names(
    registry_address: str, registry: ModelRegistryServiceStub
) -> None:
    name = await _model(registry, versions=3)
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=2))

    shown = {
        ref: await _strata(registry_address, "models", "show", ref)
        for ref in (name, f"{name}:1", f"{name}@champion")
    }

    assert {ref: (code, out.splitlines()[0]) for ref, (code, out, _) in shown.items()} == {
        name: (0, f"{name} version 3"),
        f"{name}:1": (0, f"{name} version 1"),
        f"{name}@champion": (0, f"{name} version 2"),
    }
    assert "aliases: champion" in shown[f"{name}@champion"][1].splitlines()


async def test_promote_moves_the_alias_and_audit_records_each_move(
    registry_address: str, registry: ModelRegistryServiceStub
) -> None:
    name = await _model(registry, versions=2)

    first = await _strata(registry_address, "models", "promote", name, "1", "--alias", "champion")
    second = await _strata(
        registry_address, "models", "promote", name, "2", "--alias", "champion", "--reason", "ab"
    )
    again = await _strata(registry_address, "models", "promote", name, "2")
    code, audit, err = await _strata(registry_address, "models", "audit", name)

    assert first == (0, f"{name}: champion -> version 1 (was nothing)\n", "")
    assert second == (0, f"{name}: champion -> version 2 (was version 1)\n", "")
    assert again == (0, f"{name}: champion already points at version 2\n", "")
    model = await registry.GetModel(pb.GetModelRequest(name=name))
    assert dict(model.model.aliases) == {"champion": 2}
    assert (code, err) == (0, "")
    moves = [_cells(line) for line in audit.splitlines() if "alias_set" in line]
    assert [[*row[3:6], row[7]] for row in moves] == [
        ["2", "champion", "1", "ab"],
        ["1", "champion", "-", "-"],
    ]
    registered = [line for line in audit.splitlines() if "version_registered" in line]
    assert len(registered) == 2


async def test_list_shows_each_model_with_its_latest_version_and_aliases(
    registry_address: str, registry: ModelRegistryServiceStub
) -> None:
    name = await _model(registry, versions=2)
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1))
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="challenger", version=2))

    code, out, err = await _strata(registry_address, "models", "list")

    assert (code, err) == (0, "")
    row = next(line for line in out.splitlines() if f" {name} " in line)
    assert _cells(row)[:4] == [name, "2", "challenger=2, champion=1", "eta-team"]


async def test_each_failure_is_one_line_naming_what_is_wrong(
    registry_address: str, registry: ModelRegistryServiceStub
) -> None:
    name = await _model(registry, versions=1)
    absent = _name()
    cases = {
        ("show", absent): f"model {absent!r} not found",
        ("show", f"{name}:9"): f"version 9 of model {name!r} not found",
        ("show", f"{name}@nope"): f"alias 'nope' of model {name!r} not found",
        ("show", f"{name}:abc"): (
            f"'{name}:abc': the version after ':' must be a positive integer, got 'abc'"
        ),
        ("promote", absent, "1"): f"model {absent!r} not found",
        ("promote", name, "7"): f"version 7 of model {name!r} not found",
        ("audit", absent): f"model {absent!r} not found",
    }

    seen = {args: await _strata(registry_address, "models", *args) for args in cases}

    assert seen == {args: (1, "", f"{line}\n") for args, line in cases.items()}
    model = await registry.GetModel(pb.GetModelRequest(name=name))
    assert dict(model.model.aliases) == {}


async def test_an_unreachable_registry_is_named_in_one_line() -> None:
    code, out, err = await _strata(f"127.0.0.1:{free_port()}", "models", "list")

    assert (code, out) == (1, "")
    assert err.startswith("the registry is not reachable: ")
    assert len(err.splitlines()) == 1
