"""The deploy gateway as operators run it: ``python -m strata.gateway`` fed by a real
``python -m strata.registry`` on the test stack.

Models are tiny ONNX graphs built with onnx.helper (y = x * k), registered through
the registry's API; the gateway gets them only from the registry, and learns of
alias moves from the AliasChanged events on Kafka (its periodic re-read of the
registry is set to an hour here, so a swap seen in a test came through the event).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from onnx import TensorProto, helper
from service_processes import running

from strata.api.gateway.v1 import gateway_pb2 as gpb
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub
from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.blobs import open_blob_store
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.settings import AuthSettings, BlobSettings, load

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for a process or a swap: a guard against hanging, not a timing check."""
CLIENTS = 8
MOST_REQUESTS = 20_000
"""Each load client stops after this many requests at most: the load is bounded."""
AFTER_SWAP = 50
"""...or once it has had this many answers from the new version."""


def times(factor: float) -> bytes:
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


@pytest.fixture(scope="module")
async def registry_address(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    folder = tmp_path_factory.mktemp("registry")
    async with running("registry", folder, STRATA_BLOB_BACKEND="s3") as service:
        yield service.address


@pytest.fixture
async def registry(registry_address: str) -> AsyncIterator[ModelRegistryServiceStub]:
    async with channel(registry_address, load(AuthSettings), mode="development") as c:
        yield ModelRegistryServiceStub(c)


@dataclass
class Gateway:
    """A running gateway: its OIP client, its gRPC address and the file its log lines go to."""

    oip: GRPCInferenceServiceStub
    address: str
    log: Path

    async def until_logged(self, text: str) -> dict[str, Any]:
        async with asyncio.timeout(BOUND):
            while True:
                for raw in self.log.read_text().splitlines():
                    line: dict[str, Any] = json.loads(raw) if raw.startswith("{") else {}
                    if text in line.get("event", ""):
                        return line
                await asyncio.sleep(0.2)


@asynccontextmanager
async def _running_gateway(
    folder: Path, registry_address: str, models: dict[str, list[str]]
) -> AsyncIterator[Gateway]:
    async with (
        running(
            "gateway",
            folder,
            STRATA_GATEWAY_MODELS=json.dumps(models),
            STRATA_GATEWAY_REGISTRY=registry_address,
            STRATA_GATEWAY_RECONCILE_INTERVAL="3600",
        ) as service,
        channel(service.address, load(AuthSettings), mode="development") as chan,
    ):
        yield Gateway(GRPCInferenceServiceStub(chan), service.address, service.log)


@asynccontextmanager
async def _gateway(
    folder: Path, registry_address: str, models: dict[str, list[str]]
) -> AsyncIterator[GRPCInferenceServiceStub]:
    async with _running_gateway(folder, registry_address, models) as gateway:
        yield gateway.oip


async def _version(registry: ModelRegistryServiceStub, model: str, onnx: bytes) -> int:
    """Upload ``onnx`` and register it as the next version of ``model``."""
    header = pb.ArtifactHeader(
        model_name=model,
        name="model.onnx",
        kind=pb.ARTIFACT_KIND_ONNX_MODEL,
        media_type="application/onnx",
        size_bytes=len(onnx),
        sha256=hashlib.sha256(onnx).hexdigest(),
    )

    async def parts() -> AsyncIterator[pb.UploadArtifactRequest]:
        yield pb.UploadArtifactRequest(header=header)
        yield pb.UploadArtifactRequest(chunk=onnx)

    await registry.UploadArtifact(parts())
    reply = await registry.RegisterVersion(
        pb.RegisterVersionRequest(model_name=model, artifact_sha256s=[header.sha256])
    )
    version: int = reply.model_version.version
    return version


async def _model(registry: ModelRegistryServiceStub, *factors: float) -> str:
    """A new model with one version per factor, the first one champion."""
    name = f"eta-{uuid.uuid4().hex[:10]}"
    await registry.CreateModel(pb.CreateModelRequest(name=name))
    for factor in factors:
        await _version(registry, name, times(factor))
    await registry.SetAlias(pb.SetAliasRequest(model_name=name, alias="champion", version=1))
    return name


def _infer(model: str, rows: list[list[float]]) -> oip.ModelInferRequest:
    return oip.ModelInferRequest(
        model_name=model,
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name="x",
                datatype="FP32",
                shape=[len(rows), 2],
                contents=oip.InferTensorContents(fp32_contents=[v for r in rows for v in r]),
            )
        ],
    )


async def _until_ready(gateway: GRPCInferenceServiceStub) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            if (await gateway.ServerReady(oip.ServerReadyRequest())).ready:
                return
            await asyncio.sleep(0.1)


@dataclass
class Load:
    """What the load clients saw: the version of each answer, and every failure."""

    versions: list[int] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    failures: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


async def _client(gateway: GRPCInferenceServiceStub, model: str, load_: Load) -> None:
    factors = {1: 2.0, 2: 3.0}
    new = 0
    for i in range(MOST_REQUESTS):
        if new >= AFTER_SWAP:
            return
        x = float(i % 7 + 1)
        try:
            reply = await gateway.ModelInfer(_infer(model, [[x, 1.0]]))
        except grpc.aio.AioRpcError as error:
            load_.failures.append(f"{error.code().name}: {error.details()}")
            continue
        version = int(reply.model_version)
        load_.versions.append(version)
        load_.started.set()
        new += version == 2
        expected = [x * factors[version], 1.0 * factors[version]]
        if list(reply.outputs[0].contents.fp32_contents) != expected:
            load_.wrong.append(f"v{version}: {reply.outputs[0].contents.fp32_contents}")
        await asyncio.sleep(0)


async def test_the_champion_answers_and_a_moved_alias_swaps_with_no_failed_request(
    registry: ModelRegistryServiceStub, registry_address: str, tmp_path: Path
) -> None:
    model = await _model(registry, 2.0, 3.0)
    async with _gateway(tmp_path, registry_address, {model: ["champion"]}) as gateway:
        await _until_ready(gateway)
        reply = await gateway.ModelInfer(_infer(model, [[1.0, 2.0], [3.0, 4.0]]))
        assert reply.model_version == "1"
        assert list(reply.outputs[0].shape) == [2, 2]
        assert list(reply.outputs[0].contents.fp32_contents) == [2.0, 4.0, 6.0, 8.0]

        load_ = Load()
        clients = [asyncio.create_task(_client(gateway, model, load_)) for _ in range(CLIENTS)]
        async with asyncio.timeout(BOUND):
            await load_.started.wait()  # the load runs before the alias moves
            await registry.SetAlias(
                pb.SetAliasRequest(model_name=model, alias="champion", version=2)
            )
            await asyncio.gather(*clients)

        assert load_.failures == []
        assert load_.wrong == []
        assert load_.versions[0] == 1
        assert load_.versions.count(2) == CLIENTS * AFTER_SWAP
        reply = await gateway.ModelInfer(_infer(model, [[1.0, 2.0]]))
        assert reply.model_version == "2"
        assert list(reply.outputs[0].contents.fp32_contents) == [3.0, 6.0]


async def test_model_metadata_names_the_inputs_and_outputs(
    registry: ModelRegistryServiceStub, registry_address: str, tmp_path: Path
) -> None:
    model = await _model(registry, 2.0)
    async with _gateway(tmp_path, registry_address, {model: ["champion"]}) as gateway:
        await _until_ready(gateway)
        meta = await gateway.ModelMetadata(oip.ModelMetadataRequest(name=model))
        assert meta.name == model
        assert list(meta.versions) == ["1"]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("x", "FP32", [-1, 2])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("y", "FP32", [-1, 2])
        ]
        assert (await gateway.ModelReady(oip.ModelReadyRequest(name=model))).ready
        assert not (await gateway.ModelReady(oip.ModelReadyRequest(name="nope"))).ready
        live = await gateway.ServerLive(oip.ServerLiveRequest())
        assert live.live


async def test_bad_requests_are_refused_naming_the_input_or_the_model(
    registry: ModelRegistryServiceStub, registry_address: str, tmp_path: Path
) -> None:
    model = await _model(registry, 2.0)
    async with (
        _running_gateway(tmp_path, registry_address, {model: ["champion"]}) as running_gateway,
        channel(running_gateway.address, load(AuthSettings), mode="development") as chan,
    ):
        gateway = running_gateway.oip
        await _until_ready(gateway)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await PredictionServiceStub(chan).Predict(
                gpb.PredictRequest(model_name=model, rows=[gpb.PredictRow()])
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no feature bindings" in (caught.value.details() or "")

        wrong = _infer(model, [[1.0, 2.0]])
        wrong.inputs[0].shape[:] = [1, 3]
        wrong.inputs[0].contents.fp32_contents.append(3.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.ModelInfer(wrong)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'x'" in (caught.value.details() or "")
        assert "[1, 3]" in (caught.value.details() or "")
        assert "[-1, 2]" in (caught.value.details() or "")
        assert "inputs[0].shape" in field_violations(caught.value)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.ModelInfer(_infer("no-such-model", [[1.0, 2.0]]))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-model" in (caught.value.details() or "")


async def test_a_version_whose_file_fails_its_sha256_is_refused_and_the_previous_serves(
    registry: ModelRegistryServiceStub, registry_address: str, tmp_path: Path
) -> None:
    model = await _model(registry, 2.0, 3.0)
    v2 = (
        await registry.GetVersion(pb.GetVersionRequest(model_name=model, version=2))
    ).model_version
    sha = v2.artifacts[0].sha256
    async with open_blob_store(BlobSettings(backend="s3")) as blobs:  # the blob rots in storage
        await blobs.put(f"models/{model}/artifacts/{sha}", times(5.0))
    async with _running_gateway(tmp_path, registry_address, {model: ["champion"]}) as gateway:
        await _until_ready(gateway.oip)
        await registry.SetAlias(pb.SetAliasRequest(model_name=model, alias="champion", version=2))
        refused = await gateway.until_logged("refused a version")
        assert sha in refused["reason"]
        reply = await gateway.oip.ModelInfer(_infer(model, [[1.0, 2.0]]))
        assert reply.model_version == "1"
        assert list(reply.outputs[0].contents.fp32_contents) == [2.0, 4.0]


async def test_a_deleted_alias_is_no_longer_served(
    registry: ModelRegistryServiceStub, registry_address: str, tmp_path: Path
) -> None:
    model = await _model(registry, 2.0)
    async with _gateway(tmp_path, registry_address, {model: ["champion"]}) as gateway:
        await _until_ready(gateway)
        await registry.DeleteAlias(pb.DeleteAliasRequest(model_name=model, alias="champion"))
        refusal: grpc.aio.AioRpcError | None = None
        async with asyncio.timeout(BOUND):
            while refusal is None:
                try:
                    await gateway.ModelInfer(_infer(model, [[1.0, 2.0]]))
                except grpc.aio.AioRpcError as error:
                    refusal = error
                await asyncio.sleep(0.05)
        assert refusal.code() == grpc.StatusCode.NOT_FOUND
        assert "'champion'" in (refusal.details() or "")
        assert not (await gateway.ServerReady(oip.ServerReadyRequest())).ready
