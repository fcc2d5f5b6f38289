"""``log_model`` against ``python -m strata.registry`` on the test stack.

What a data scientist relies on: the version the SDK registers serves, once
downloaded from the registry, the predictions the scikit-learn model makes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from numpy.typing import NDArray
from sklearn.ensemble import GradientBoostingRegressor  # type: ignore[import-untyped]

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.rpc.client import channel
from strata.core.settings import AuthSettings, load
from strata.sdk.models import (
    ArtifactFile,
    OutputMismatchError,
    Tolerance,
    log_model,
    log_model_sync,
)

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for the registry to serve: a guard against hanging, not a timing check."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def registry_port(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[int]:
    async with _running(tmp_path_factory.mktemp("models-sdk")) as port:
        yield port


@pytest.fixture
async def registry(registry_port: int) -> AsyncIterator[ModelRegistryServiceStub]:
    async with channel(
        f"127.0.0.1:{registry_port}", load(AuthSettings), mode="development"
    ) as chan:
        yield ModelRegistryServiceStub(chan)


@asynccontextmanager
async def _running(folder: Path) -> AsyncIterator[int]:
    port = _free_port()
    log = folder / "registry.log"
    environment = {
        **os.environ,
        "STRATA_SERVICE_REGISTRY_PORT": str(port),
        "STRATA_SERVICE_REGISTRY_METRICS_PORT": str(_free_port()),
        "STRATA_BLOB_BACKEND": "s3",
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.registry", env=environment, stderr=sink
        )
    try:
        async with asyncio.timeout(BOUND), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as c:
            health = health_pb2_grpc.HealthStub(c)
            while True:
                assert process.returncode is None, log.read_text()
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


def _trained() -> tuple[GradientBoostingRegressor, NDArray[np.float64]]:
    rng = np.random.default_rng(11)
    features = rng.normal(size=(400, 3))
    target = 20 + 4 * features[:, 0] - 3 * features[:, 1] ** 2 + rng.normal(size=400)
    model = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0)
    return model.fit(features, target), features


async def _download(stub: ModelRegistryServiceStub, model: str, sha256: str) -> bytes:
    parts = [
        part
        async for part in stub.DownloadArtifact(
            pb.DownloadArtifactRequest(model_name=model, sha256=sha256)
        )
    ]
    return b"".join(part.chunk for part in parts[1:])


def _name() -> str:
    return f"sdk-eta-{uuid.uuid4().hex[:10]}"


async def test_a_logged_version_serves_the_predictions_of_the_sklearn_model(
    registry: ModelRegistryServiceStub,
) -> None:
    model, features = _trained()
    name = _name()
    report = ArtifactFile(
        "report.json", pb.ARTIFACT_KIND_REPORT, b'{"mae": 1.1}', "application/json"
    )

    logged = await log_model(
        model,
        name=name,
        sample=features[:100],
        registry=registry,
        artifacts=[report],
        metrics={"val_mae": 1.1},
        generation=pb.GenerationCode(entry_point="train.py:fit"),
        owner="eta-team",
        task="regression",
    )

    stored = (
        await registry.GetVersion(pb.GetVersionRequest(model_name=name, version=logged.version))
    ).model_version
    assert stored == logged
    assert [a.kind for a in stored.artifacts] == [
        pb.ARTIFACT_KIND_ONNX_MODEL,
        pb.ARTIFACT_KIND_REPORT,
    ]
    onnx = await _download(registry, name, stored.artifacts[0].sha256)
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    rows = features[100:].astype(np.float32)
    served = session.run(None, {stored.signature.inputs[0].name: rows})[0]
    np.testing.assert_allclose(served.ravel(), model.predict(rows), rtol=1e-4, atol=1e-4)
    # What the SDK added without being told:
    assert stored.params["n_estimators"] == "30"
    assert stored.generation.framework == "scikit-learn"
    assert stored.generation.entry_point == "train.py:fit"
    assert "scikit-learn" in stored.dependencies.packages
    assert stored.dependencies.python_version
    assert stored.definition.model_class.endswith("GradientBoostingRegressor")
    assert stored.signature.inputs[0].shape == [-1, 3]
    assert (stored.owner, stored.task, dict(stored.metrics)) == (
        "eta-team",
        "regression",
        {"val_mae": 1.1},
    )


async def test_logging_again_adds_a_version_to_the_existing_model(
    registry: ModelRegistryServiceStub,
) -> None:
    model, features = _trained()
    name = _name()

    first = await log_model(model, name=name, sample=features[:20], registry=registry)
    second = await log_model(model, name=name, sample=features[:20], registry=registry)

    assert (first.version, second.version) == (1, 2)


async def test_the_default_registry_is_the_one_the_settings_name(
    registry: ModelRegistryServiceStub, registry_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_SERVICE_REGISTRY_PORT", str(registry_port))
    model, features = _trained()
    name = _name()

    logged = await log_model(model, name=name, sample=features[:20])

    got = await registry.GetVersion(pb.GetVersionRequest(model_name=name, version=logged.version))
    assert got.model_version.artifacts[0].sha256 == logged.artifacts[0].sha256


def test_log_model_sync_registers_a_version_from_code_that_does_not_await(
    registry_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_SERVICE_REGISTRY_PORT", str(registry_port))
    model, features = _trained()
    name = _name()

    first = log_model_sync(model, name=name, sample=features[:20])
    second = log_model_sync(model, name=name, sample=features[:20])

    assert (first.version, second.version) == (1, 2)
    assert isinstance(first, pb.ModelVersion)


async def test_log_model_sync_works_where_an_event_loop_is_running_as_in_a_notebook(
    registry: ModelRegistryServiceStub, registry_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_SERVICE_REGISTRY_PORT", str(registry_port))
    model, features = _trained()
    name = _name()

    logged = log_model_sync(model, name=name, sample=features[:20])

    got = await registry.GetVersion(pb.GetVersionRequest(model_name=name, version=logged.version))
    assert got.model_version.artifacts[0].sha256 == logged.artifacts[0].sha256


async def test_a_mismatch_registers_nothing(registry: ModelRegistryServiceStub) -> None:
    model, features = _trained()
    name = _name()

    with pytest.raises(OutputMismatchError):
        await log_model(
            model,
            name=name,
            sample=features[:50],
            registry=registry,
            tolerance=Tolerance(absolute=0.0, relative=0.0),
        )

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry.GetModel(pb.GetModelRequest(name=name))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
