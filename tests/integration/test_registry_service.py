"""The model registry as operators run it: ``python -m strata.registry`` on the test stack.

Artifacts go to the stack's S3, versions and the audit log to Postgres, alias
changes through the outbox to Kafka. Every file uploaded here is built for real
(pickles with pickle, ONNX models with onnx.helper).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import pickle
import signal
import socket
import sys
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from pydantic import SecretStr

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import BundleRef, FeatureViewRef, PartitionRef
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.blobs import open_blob_store
from strata.core.bus import Bus
from strata.core.postgres import create_pool
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.settings import (
    AuthSettings,
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    load,
)
from strata.core.topics import MODELS_EVENTS

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for the service or an event: a guard against hanging, not a timing check."""
MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ModelRegistryServiceStub]:
    folder = tmp_path_factory.mktemp("registry")
    async with _running(folder) as port, _client(port, load(AuthSettings)) as stub:
        yield stub


@asynccontextmanager
async def _running(folder: Path, **env: str) -> AsyncIterator[int]:
    """``python -m strata.registry`` on the test stack's S3, SERVING on the port yielded."""
    port = _free_port()
    log = folder / "registry.log"
    environment = {
        **os.environ,
        "STRATA_SERVICE_REGISTRY_PORT": str(port),
        "STRATA_SERVICE_REGISTRY_METRICS_PORT": str(_free_port()),
        "STRATA_BLOB_BACKEND": "s3",
        **env,
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.registry", env=environment, stderr=sink
        )
    try:
        await _until_serving(port, process, log)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def _client(port: int, auth: AuthSettings) -> AsyncIterator[ModelRegistryServiceStub]:
    async with channel(f"127.0.0.1:{port}", auth, mode="development") as chan:
        yield ModelRegistryServiceStub(chan)


async def _until_serving(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(BOUND), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        health = health_pb2_grpc.HealthStub(chan)
        while True:
            assert process.returncode is None, log.read_text()  # noqa: ASYNC240 - on failure only
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)


# files


def tiny_onnx(*, external: str | None = None, bias: float = 2.0) -> bytes:
    """y = x @ W + b for x of shape [batch, 2]; W optionally in external data."""
    weights = numpy_helper.from_array(np.array([[0.5], [1.5]], dtype=np.float32), "W")
    if external is not None:
        set_external_data(weights, location=external)
        weights.ClearField("raw_data")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights, helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests"
    )
    model.ir_version = 8
    return model.SerializeToString()


def torch_like_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": [1.0]}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def sample_rows(size: int) -> bytes:
    """CSV rows, ``size`` bytes long: data that holds no code."""
    rows = b"".join(b"%08d,%08d\n" % (i, i * 7) for i in range(size // 18 + 1))
    return rows[:size]


# calls


def _model_name() -> str:
    return f"eta-{uuid.uuid4().hex[:10]}"


async def _create(stub: ModelRegistryServiceStub) -> str:
    name = _model_name()
    await stub.CreateModel(pb.CreateModelRequest(name=name, description="minutes to delivery"))
    return name


def _messages(
    header: pb.ArtifactHeader, data: bytes, chunk: int = MiB
) -> list[pb.UploadArtifactRequest]:
    return [
        pb.UploadArtifactRequest(header=header),
        *(pb.UploadArtifactRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)),
    ]


def _header(
    model: str, name: str, kind: int, data: bytes, upload_id: str = "", offset: int = 0
) -> pb.ArtifactHeader:
    return pb.ArtifactHeader(
        model_name=model,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        media_type="application/octet-stream",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        upload_id=upload_id,
        offset=offset,
    )


async def _upload(
    stub: ModelRegistryServiceStub, model: str, name: str, kind: int, data: bytes
) -> pb.Artifact:
    reply = await stub.UploadArtifact(_stream(_messages(_header(model, name, kind, data), data)))
    artifact: pb.Artifact = reply.artifact
    return artifact


async def _stream(
    messages: Iterable[pb.UploadArtifactRequest],
) -> AsyncIterator[pb.UploadArtifactRequest]:
    for message in messages:
        yield message


async def _download(
    stub: ModelRegistryServiceStub, model: str, sha256: str
) -> tuple[pb.Artifact, bytes]:
    parts = [
        part
        async for part in stub.DownloadArtifact(
            pb.DownloadArtifactRequest(model_name=model, sha256=sha256)
        )
    ]
    return parts[0].artifact, b"".join(p.chunk for p in parts[1:])


async def _refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Status, message and the fields the BadRequest names, of a call that must fail."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", field_violations(error)
    pytest.fail("the call succeeded")


async def _register(
    stub: ModelRegistryServiceStub, model: str, onnx_sha: str, request_id: str = ""
) -> pb.ModelVersion:
    reply = await stub.RegisterVersion(
        pb.RegisterVersionRequest(
            model_name=model, artifact_sha256s=[onnx_sha], request_id=request_id
        )
    )
    version: pb.ModelVersion = reply.model_version
    return version


# tests


async def test_a_version_registered_with_every_artifact_kind_returns_them_all(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    onnx = await _upload(registry, model, "model.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, tiny_onnx())
    report = await _upload(registry, model, "report.json", pb.ARTIFACT_KIND_REPORT, b'{"mae": 3.2}')
    sample = await _upload(
        registry, model, "sample.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, sample_rows(1000)
    )
    request = pb.RegisterVersionRequest(
        model_name=model,
        artifact_sha256s=[onnx.sha256, report.sha256, sample.sha256],
        metrics={"val_mae_minutes": 3.2},
        params={"n_estimators": "100", "max_depth": "3"},
        lineage=pb.Lineage(
            training_run_id="run-7",
            dataset_partitions=[PartitionRef(dataset="orders", partition="date=2026-11-30")],
            feature_views=[FeatureViewRef(name="courier_stats", version=4)],
            training_set_id="ts-1",
            code_bundle=BundleRef(uri="s3://bundles/abc", sha256="a" * 64),
            training_set_sha256="b" * 64,
        ),
        feature_bindings=[
            pb.FeatureBinding(input="x", features=["courier_stats:speed", "request:distance"])
        ],
        description="first",
        labels={"team": "eta"},
        request_id="attempt-1",
        definition=pb.ModelDefinition(
            model_class="sklearn.linear_model.LinearRegression", architecture="2 weights"
        ),
        dependencies=pb.Dependencies(python_version="3.11.9", packages={"scikit-learn": "1.5.2"}),
        generation=pb.GenerationCode(
            framework="scikit-learn",
            framework_version="1.5.2",
            entry_point="train.py:fit",
            split="by event time: train < 2026-10-01 <= validation",
            experiment_count=12,
            search_space={"max_depth": "[2, 8]"},
        ),
        curves=[pb.Curve(name="loss", x_label="epoch", y_label="mae", x=[1, 2], y=[5.0, 3.2])],
        owner="eta-team",
        task="regression",
    )
    registered = (await registry.RegisterVersion(request)).model_version
    got = (
        await registry.GetVersion(pb.GetVersionRequest(model_name=model, version=1))
    ).model_version

    assert got == registered
    assert got.version == 1
    assert [a.sha256 for a in got.artifacts] == [onnx.sha256, report.sha256, sample.sha256]
    assert [a.kind for a in got.artifacts] == [
        pb.ARTIFACT_KIND_ONNX_MODEL,
        pb.ARTIFACT_KIND_REPORT,
        pb.ARTIFACT_KIND_DATA_SAMPLE,
    ]
    for field in (
        "metrics", "params", "lineage", "feature_bindings", "description", "labels",
        "dependencies", "generation", "curves", "owner", "task",
    ):  # fmt: skip
        assert getattr(got, field) == getattr(request, field), field
    assert got.definition.model_class == request.definition.model_class
    assert got.definition.architecture == "2 weights"
    # Read from the ONNX file, not from the request:
    assert got.signature == pb.Signature(
        inputs=[pb.TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[pb.TensorSpec(name="y", datatype="FP32", shape=[-1, 1])],
    )
    assert dict(got.definition.onnx_opsets) == {"": 17}
    assert got.definition.onnx_ir_version == 8
    assert got.definition.producer_name == "tests"
    assert got.created_by
    # The same request_id is the same version, not a second one.
    again = (await registry.RegisterVersion(request)).model_version
    assert again == registered
    listed = await registry.ListVersions(pb.ListVersionsRequest(model_name=model))
    assert [v.version for v in listed.model_versions] == [1]


async def test_upload_then_download_gives_the_same_bytes_and_sha256(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = sample_rows(3 * MiB + 12345)
    uploaded = await _upload(registry, model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data)
    artifact, downloaded = await _download(registry, model, uploaded.sha256)

    assert downloaded == data
    assert hashlib.sha256(downloaded).hexdigest() == artifact.sha256 == uploaded.sha256
    assert artifact.size_bytes == len(data)
    assert artifact.name == "rows.csv"
    # Content already stored is returned as is.
    assert (
        await _upload(registry, model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data) == uploaded
    )


UNSAFE = {
    "pickle": (pickle.dumps({"w": [1.0]}, protocol=4), "is a Python pickle (protocol 4"),
    "pickle-protocol-0": (pickle.dumps({"w": [1.0]}, protocol=0), "is a Python pickle (protocol 0"),
    "gzip-pickle": (gzip.compress(pickle.dumps([1.0])), "gzip-compressed a Python pickle"),
    "joblib-zlib": (zlib.compress(pickle.dumps([1.0])), "zlib-compressed a Python pickle"),
    "torch-zip": (torch_like_zip(), "a zip holding the pickle 'archive/data.pkl'"),
    "onnx-external-parent": (tiny_onnx(external="../x"), "points outside the model's folder"),
    "onnx-external-absolute": (tiny_onnx(external="/etc/passwd"), "is an absolute path"),
    "not-onnx": (b"hello", "is not an ONNX model"),
}


@pytest.mark.parametrize("case", UNSAFE)
async def test_each_unsafe_upload_is_refused_with_its_reason(
    registry: ModelRegistryServiceStub, case: str
) -> None:
    data, reason = UNSAFE[case]
    model = await _create(registry)
    code, message, fields = await _refusal(
        _upload(registry, model, "model.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, data)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'model.onnx'" in message
    assert reason in fields["chunk"]
    sha = hashlib.sha256(data).hexdigest()
    code, _, _ = await _refusal(_download(registry, model, sha))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_pickle_is_refused_whatever_kind_it_claims(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = pickle.dumps({"w": [1.0]}, protocol=5)
    code, _, fields = await _refusal(
        _upload(registry, model, "report.json", pb.ARTIFACT_KIND_REPORT, data)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Python pickle" in fields["chunk"]


async def test_an_interrupted_upload_resumes_where_it_stopped(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = sample_rows(4 * MiB + 777)
    upload_id = uuid.uuid4().hex
    header = _header(model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data, upload_id)
    first = _messages(header, data)[:3]  # header and the first 2 MiB
    cut = asyncio.Event()

    async def until_cut() -> AsyncIterator[pb.UploadArtifactRequest]:
        for message in first:
            yield message
        await cut.wait()

    call = registry.UploadArtifact(until_cut())
    status = pb.GetUploadRequest(model_name=model, upload_id=upload_id)
    await _until_stored(registry, status, 2 * MiB)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    stored = await registry.GetUpload(status)
    assert stored.received_bytes == 2 * MiB
    assert stored.header.sha256 == header.sha256

    wrong = _header(model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data, upload_id, offset=0)
    code, _, fields = await _refusal(registry.UploadArtifact(_stream(_messages(wrong, b"x"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "2097152 bytes stored" in fields["header.offset"]

    offset = stored.received_bytes
    resumed = _header(model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data, upload_id, offset)
    reply = await registry.UploadArtifact(_stream(_messages(resumed, data[offset:])))
    _, downloaded = await _download(registry, model, reply.artifact.sha256)
    assert downloaded == data
    code, _, _ = await _refusal(registry.GetUpload(status))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_an_abandoned_upload_is_removed_with_its_parts(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = sample_rows(2 * MiB + 10)
    upload_id = uuid.uuid4().hex
    header = _header(model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data, upload_id)
    code, _, fields = await _refusal(
        registry.UploadArtifact(_stream(_messages(header, data[: 2 * MiB])))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "resume upload" in fields["header.size_bytes"]
    prefix = f"uploads/{model}/{upload_id}/"
    async with open_blob_store(BlobSettings(backend="s3")) as blobs:
        assert len(await blobs.list(prefix)) == 2
        pool = await create_pool(load(PostgresSettings))
        try:  # as if nothing was stored for longer than the time to live
            await pool.execute(
                "UPDATE registry.uploads SET updated_at = now() - interval '8 days' "
                "WHERE upload_id = $1",
                upload_id,
            )
        finally:
            await pool.close()
        status = pb.GetUploadRequest(model_name=model, upload_id=upload_id)
        async with asyncio.timeout(BOUND):
            while True:
                if await _code(registry.GetUpload(status)) == grpc.StatusCode.NOT_FOUND:
                    break
                await asyncio.sleep(0.5)
        assert await blobs.list(prefix) == []
    resumed = _header(model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data, upload_id, 2 * MiB)
    code, _, fields = await _refusal(
        registry.UploadArtifact(_stream(_messages(resumed, data[2 * MiB :])))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is new: expected offset 0" in fields["header.offset"]


async def _until_stored(
    registry: ModelRegistryServiceStub, status: pb.GetUploadRequest, size: int
) -> None:
    """Wait until the registry has stored ``size`` bytes of an upload (it may not exist yet)."""
    async with asyncio.timeout(BOUND):
        while True:
            try:
                if (await registry.GetUpload(status)).received_bytes >= size:
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.05)


async def test_a_mismatched_sha256_is_refused_naming_the_field(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    data = sample_rows(100)
    header = _header(model, "rows.csv", pb.ARTIFACT_KIND_DATA_SAMPLE, data)
    header.sha256 = hashlib.sha256(b"something else").hexdigest()
    code, _, fields = await _refusal(registry.UploadArtifact(_stream(_messages(header, data))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.sha256" in fields


async def test_set_alias_is_audited_and_announced_as_alias_changed(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    first = await _upload(registry, model, "a.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, tiny_onnx())
    second = await _upload(
        registry, model, "b.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, tiny_onnx(bias=3.0)
    )
    await _register(registry, model, first.sha256)
    await _register(registry, model, second.sha256)

    await registry.SetAlias(
        pb.SetAliasRequest(model_name=model, alias="champion", version=1, reason="first")
    )
    moved = await registry.SetAlias(
        pb.SetAliasRequest(
            model_name=model, alias="champion", version=2, expected_version=1, reason="better mae"
        )
    )
    assert dict(moved.model.aliases) == {"champion": 2}
    code, _, _ = await _refusal(
        registry.SetAlias(
            pb.SetAliasRequest(model_name=model, alias="champion", version=1, expected_version=1)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    await registry.DeleteAlias(
        pb.DeleteAliasRequest(model_name=model, alias="champion", reason="retire")
    )

    log = await registry.GetAuditLog(pb.GetAuditLogRequest(model_name=model))
    changes = [
        (e.action, e.alias, e.version, e.previous_version, e.reason) for e in log.entries if e.alias
    ]
    assert changes == [
        (pb.AUDIT_ACTION_ALIAS_DELETED, "champion", 0, 2, "retire"),
        (pb.AUDIT_ACTION_ALIAS_SET, "champion", 2, 1, "better mae"),
        (pb.AUDIT_ACTION_ALIAS_SET, "champion", 1, 0, "first"),
    ]
    assert all(e.principal for e in log.entries)
    assert [e.action for e in reversed(log.entries) if not e.alias] == [
        pb.AUDIT_ACTION_MODEL_CREATED,
        pb.AUDIT_ACTION_ARTIFACT_UPLOADED,
        pb.AUDIT_ACTION_ARTIFACT_UPLOADED,
        pb.AUDIT_ACTION_VERSION_REGISTERED,
        pb.AUDIT_ACTION_VERSION_REGISTERED,
    ]
    registered, changed = await _model_events(model, versions=2, alias_changes=3)
    assert [(e.version, e.onnx_sha256) for e in registered] == [
        (1, first.sha256),
        (2, second.sha256),
    ]
    assert [(e.alias, e.version, e.previous_version) for e in changed] == [
        ("champion", 1, 0),
        ("champion", 2, 1),
        ("champion", 0, 2),
    ]
    assert all(e.changed_by == log.entries[0].principal for e in changed)


async def _model_events(
    model: str, versions: int, alias_changes: int
) -> tuple[list[pb.ModelVersionRegistered], list[pb.AliasChanged]]:
    """The events about ``model`` on Kafka, read by a consumer group of our own."""
    registered: list[pb.ModelVersionRegistered] = []
    changed: list[pb.AliasChanged] = []
    enough = asyncio.Event()
    bus = Bus("registry-test", kafka=load(KafkaSettings))
    events = bus.consumer(MODELS_EVENTS, group=f"registry-test-{uuid.uuid4().hex[:8]}")

    def check() -> None:
        if len(registered) >= versions and len(changed) >= alias_changes:
            enough.set()

    @events.on(pb.ModelVersionRegistered)
    async def on_registered(event: pb.ModelVersionRegistered, envelope: Envelope) -> None:
        if event.model_name == model:
            registered.append(event)
            check()

    @events.on(pb.AliasChanged)
    async def on_changed(event: pb.AliasChanged, envelope: Envelope) -> None:
        if event.model_name == model:
            changed.append(event)
            check()

    async with bus, asyncio.timeout(BOUND):
        await enough.wait()
    return registered, changed


async def test_versions_are_listed_newest_first_a_page_at_a_time(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    for bias in (1.0, 2.0, 3.0):
        onnx = await _upload(
            registry, model, "m.onnx", pb.ARTIFACT_KIND_ONNX_MODEL, tiny_onnx(bias=bias)
        )
        await _register(registry, model, onnx.sha256)
    first = await registry.ListVersions(pb.ListVersionsRequest(model_name=model, page_size=2))
    rest = await registry.ListVersions(
        pb.ListVersionsRequest(model_name=model, page_size=2, page_token=first.next_page_token)
    )
    assert [v.version for v in first.model_versions] == [3, 2]
    assert [v.version for v in rest.model_versions] == [1]
    assert rest.next_page_token == ""


async def test_readers_read_writers_register_and_only_promoters_move_aliases(
    tmp_path: Path,
) -> None:
    tokens = {
        f"{role}-token": {"principal": role, "roles": [f"model-{role}"]}
        for role in ("reader", "writer", "promoter")
    }
    env = {"STRATA_AUTH_TOKENS": json.dumps(tokens)}
    codes: dict[str, dict[str, grpc.StatusCode]] = {}
    async with _running(tmp_path, **env) as port:
        for role in ("reader", "writer", "promoter"):
            auth = AuthSettings(client_token=SecretStr(f"{role}-token"))
            async with _client(port, auth) as stub:
                codes[role] = {
                    "GetModel": await _code(stub.GetModel(pb.GetModelRequest(name="absent"))),
                    "CreateModel": await _code(
                        stub.CreateModel(pb.CreateModelRequest(name="Bad Name"))
                    ),
                    "SetAlias": await _code(
                        stub.SetAlias(pb.SetAliasRequest(model_name="absent", alias="champion"))
                    ),
                }
    denied, passed = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert codes == {
        "reader": {"GetModel": passed, "CreateModel": denied, "SetAlias": denied},
        "writer": {"GetModel": passed, "CreateModel": invalid, "SetAlias": denied},
        "promoter": {"GetModel": passed, "CreateModel": denied, "SetAlias": passed},
    }


async def _code(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_bad_requests_are_refused_naming_what_is_wrong(
    registry: ModelRegistryServiceStub,
) -> None:
    model = await _create(registry)
    code, _, _ = await _refusal(registry.CreateModel(pb.CreateModelRequest(name=model)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, message, _ = await _refusal(registry.GetModel(pb.GetModelRequest(name=_model_name())))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "model 'eta-" in message
    code, _, fields = await _refusal(registry.CreateModel(pb.CreateModelRequest(name="Bad Name")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in fields
    report = await _upload(registry, model, "r.json", pb.ARTIFACT_KIND_REPORT, b"{}")
    code, _, fields = await _refusal(
        registry.RegisterVersion(
            pb.RegisterVersionRequest(model_name=model, artifact_sha256s=[report.sha256])
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one ARTIFACT_KIND_ONNX_MODEL" in fields["artifact_sha256s"]
    code, _, fields = await _refusal(
        registry.RegisterVersion(
            pb.RegisterVersionRequest(model_name=model, artifact_sha256s=[report.sha256, "c" * 64])
        )
    )
    assert "no artifact" in fields["artifact_sha256s[1]"]
    code, message, _ = await _refusal(
        registry.SetAlias(pb.SetAliasRequest(model_name=model, alias="champion", version=9))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "version 9" in message
