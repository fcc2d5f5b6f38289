"""The gRPC edge of the registry: convert each request, call the domain and the store.

Every change commits together with its audit entry and, for versions and aliases,
its event in the outbox. Errors are raised as strata.core.errors; the runtime's
edge maps them to status codes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from typing_extensions import override

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceServicer
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    StrataError,
)
from strata.core.rpc.auth import current_principal
from strata.core.rpc.client import channel
from strata.core.runtime import ServiceContext
from strata.registry import uploads
from strata.registry.domain import predictions
from strata.registry.domain import requests as check
from strata.registry.domain.limits import SizeLimits
from strata.registry.domain.versions import new_version
from strata.registry.store import Conn, RegistryStore, StoredArtifact, Tx

READ = ("model-reader", "model-writer", "model-promoter")
WRITE = ("model-writer",)
PROMOTE = ("model-promoter",)
ROLES = {
    "GetModel": READ,
    "ListModels": READ,
    "GetVersion": READ,
    "ListVersions": READ,
    "DownloadArtifact": READ,
    "GetAuditLog": READ,
    "GetPredictionLineage": READ,
    "ListPredictions": READ,
    "CreateModel": WRITE,
    "UploadArtifact": WRITE,
    "GetUpload": WRITE,
    "RegisterVersion": WRITE,
    "SetAlias": PROMOTE,
    "DeleteAlias": PROMOTE,
}
"""Readers see models; writers add models, artifacts and versions; promoters move the
aliases that decide what the gateway serves (``admin`` may do everything)."""

log = structlog.stdlib.get_logger(__name__)

SCHEDULER_DEADLINE = 5.0
"""Seconds a lineage query waits for the scheduler before answering without node and times."""


class RegistryApi(ModelRegistryServiceServicer):
    """ModelRegistryService over the registry's schema and the blob store; artifacts
    within ``limits``; the attempts of a lineage asked of the scheduler at ``scheduler``
    (``host:port``), the way the gateway asks the streamer for feature views."""

    def __init__(self, context: ServiceContext, limits: SizeLimits, scheduler: str) -> None:
        self._runtime = context.settings
        self._scheduler: SchedulerServiceStub | None = None
        self._scheduler_address = scheduler
        self._limits = limits
        self._pool = context.pool
        self._blobs = context.blobs
        self._outbox = context.outbox
        self._store = RegistryStore(context.schema)

    # models

    @override
    async def CreateModel(
        self, request: pb.CreateModelRequest, context: Any
    ) -> pb.CreateModelResponse:
        check.check_name(request.name, "name")
        principal = current_principal().name
        model = pb.Model(
            name=request.name,
            description=request.description,
            owner=request.owner or principal,
            labels=request.labels,
            created_by=principal,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            if not await self._store.insert_model(conn, model):
                raise AlreadyExistsError(f"model {request.name!r} already exists")
            await self._audit(conn, pb.AUDIT_ACTION_MODEL_CREATED, request.name)
            created = await self._model(conn, request.name)
        return pb.CreateModelResponse(model=created)

    @override
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        check.check_name(request.name, "name")
        return pb.GetModelResponse(model=await self._model(self._pool, request.name))

    @override
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        size = check.page_size(request.page_size)
        after = check.check_name(request.page_token, "page_token") if request.page_token else ""
        async with self._pool.acquire() as conn:
            models = await self._store.models(conn, after, size + 1)
        token = models[size - 1].name if len(models) > size else ""
        return pb.ListModelsResponse(models=models[:size], next_page_token=token)

    # artifacts

    @override
    async def UploadArtifact(
        self, request_iterator: AsyncIterator[pb.UploadArtifactRequest], context: Any
    ) -> pb.UploadArtifactResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError(
                "header", "the first message of an upload must be its header"
            )
        header = check.check_header(first.header)
        self._limits.check(header)
        await self._model(self._pool, header.model_name)
        stored = await self._store.artifact(self._pool, header.model_name, header.sha256)
        if stored is not None:
            return pb.UploadArtifactResponse(artifact=_artifact(stored))
        if not header.upload_id:
            header.upload_id = uuid.uuid4().hex
        upload = await self._resume(header)
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgumentError("header", "only the first message may be a header")
            if len(message.chunk) > check.MAX_CHUNK:
                raise InvalidArgumentError(
                    "chunk", f"expected at most {check.MAX_CHUNK} bytes, got {len(message.chunk)}"
                )
            await upload.add(message.chunk)
        await upload.flush()
        if not upload.complete:
            raise InvalidArgumentError(
                "header.size_bytes",
                f"the stream ended after {upload.received} of {header.size_bytes} bytes; "
                f"resume upload {header.upload_id!r} at offset {upload.received}",
            )
        return pb.UploadArtifactResponse(artifact=await self._keep(upload))

    async def _resume(self, header: pb.ArtifactHeader) -> uploads.Upload:
        """The upload ``header`` starts or resumes, checked against what is stored."""
        known = await self._store.upload(self._pool, header.upload_id)
        if known is None:
            if header.offset != 0:
                raise InvalidArgumentError(
                    "header.offset", f"upload {header.upload_id!r} is new: expected offset 0"
                )
            stored = pb.ArtifactHeader()
            stored.CopyFrom(header)
            stored.offset = 0
            if not await self._store.start_upload(self._pool, stored):
                raise FailedPreconditionError(
                    f"upload {header.upload_id!r} was started by another call"
                )
            received = 0
        else:
            stored, received = known
            if not check.same_file(stored, header):
                raise InvalidArgumentError(
                    "header.upload_id",
                    f"upload {header.upload_id!r} is of another file ({stored.name!r}, "
                    f"sha256 {stored.sha256}); choose a new upload_id",
                )
            if header.offset != received:
                raise InvalidArgumentError(
                    "header.offset",
                    f"upload {header.upload_id!r} has {received} bytes stored: resume there",
                )
        return uploads.Upload(header, received, self._blobs, self._store, self._pool)

    async def _keep(self, upload: uploads.Upload) -> pb.Artifact:
        """Check the whole file, store it under its content address, record it; drop the parts."""
        header = upload.header
        key = uploads.artifact_key(header.model_name, header.sha256)
        try:
            async with upload.joined() as path:
                onnx = await asyncio.to_thread(uploads.inspect, path, header)
                await self._blobs.put(key, path)
        except InvalidArgumentError:
            await self._forget(upload)
            raise
        artifact = pb.Artifact(
            sha256=header.sha256,
            size_bytes=header.size_bytes,
            kind=header.kind,
            name=header.name,
            media_type=header.media_type,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            if await self._store.insert_artifact(conn, header.model_name, artifact, key, onnx):
                await self._audit(
                    conn,
                    pb.AUDIT_ACTION_ARTIFACT_UPLOADED,
                    header.model_name,
                    artifact_sha256=header.sha256,
                )
            await self._store.end_upload(conn, header.upload_id)
        await upload.discard()
        stored = await self._store.artifact(self._pool, header.model_name, header.sha256)
        assert stored is not None, "an artifact just recorded is gone"
        return _artifact(stored)

    async def _forget(self, upload: uploads.Upload) -> None:
        """A refused file is not kept, nor can its upload be resumed."""
        await self._store.end_upload(self._pool, upload.header.upload_id)
        await upload.discard()

    @override
    async def GetUpload(self, request: pb.GetUploadRequest, context: Any) -> pb.GetUploadResponse:
        check.check_name(request.model_name, "model_name")
        known = await self._store.upload(self._pool, request.upload_id)
        if known is None or known[0].model_name != request.model_name:
            raise NotFoundError(f"upload {request.upload_id!r} of model {request.model_name!r}")
        header, received = known
        return pb.GetUploadResponse(
            upload_id=request.upload_id, received_bytes=received, header=header
        )

    @override
    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Any
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        check.check_name(request.model_name, "model_name")
        check.check_sha256(request.sha256, "sha256")
        stored = await self._store.artifact(self._pool, request.model_name, request.sha256)
        if stored is None:
            raise NotFoundError(f"artifact {request.sha256} of model {request.model_name!r}")
        yield pb.DownloadArtifactResponse(artifact=_artifact(stored))
        async for chunk in self._blobs.open(stored.key, check.MAX_CHUNK):
            yield pb.DownloadArtifactResponse(chunk=chunk)

    # versions

    @override
    async def RegisterVersion(
        self, request: pb.RegisterVersionRequest, context: Any
    ) -> pb.RegisterVersionResponse:
        check.check_register(request)
        principal = current_principal().name
        async with self._pool.acquire() as conn, conn.transaction():
            model = await self._model(conn, request.model_name, lock=True)
            if request.request_id:
                earlier = await self._store.version_of_request(conn, model.name, request.request_id)
                if earlier is not None:
                    return pb.RegisterVersionResponse(
                        model_version=await self._version(conn, model.name, earlier)
                    )
            artifacts = await self._artifacts(conn, request)
            onnx_sha = check.onnx_artifact(request, [a.artifact.kind for a in artifacts])
            onnx = next(a.onnx for a in artifacts if a.artifact.sha256 == onnx_sha)
            assert onnx is not None, "an ONNX artifact is stored with its summary"
            check.check_bindings(request, [t.name for t in onnx.inputs])
            version = new_version(
                request,
                number=await self._store.next_version(conn, model.name),
                artifacts=[_artifact(a) for a in artifacts],
                onnx=onnx,
                model_owner=model.owner,
                principal=principal,
                now=datetime.now(UTC),
            )
            await self._store.insert_version(conn, version, request.request_id)
            await self._audit(
                conn, pb.AUDIT_ACTION_VERSION_REGISTERED, model.name, version=version.version
            )
            await self._outbox.publish(
                conn,
                pb.ModelVersionRegistered(
                    model_name=model.name,
                    version=version.version,
                    onnx_sha256=onnx_sha,
                    registered_by=principal,
                ),
            )
        return pb.RegisterVersionResponse(model_version=version)

    async def _artifacts(
        self, conn: Conn, request: pb.RegisterVersionRequest
    ) -> list[StoredArtifact]:
        shas = list(request.artifact_sha256s)
        found = await self._store.artifacts(conn, request.model_name, shas)
        for i, sha in enumerate(shas):
            if sha not in found:
                raise InvalidArgumentError(
                    f"artifact_sha256s[{i}]",
                    f"no artifact {sha} was uploaded for model {request.model_name!r}",
                )
        return [found[sha] for sha in shas]

    @override
    async def GetVersion(
        self, request: pb.GetVersionRequest, context: Any
    ) -> pb.GetVersionResponse:
        check.check_name(request.model_name, "model_name")
        async with self._pool.acquire() as conn:
            await self._model(conn, request.model_name)
            selector = request.WhichOneof("selector")
            if selector == "alias":
                number = await self._store.alias(conn, request.model_name, request.alias)
                if number is None:
                    raise NotFoundError(f"alias {request.alias!r} of model {request.model_name!r}")
            elif selector == "version":
                number = request.version
            else:
                raise InvalidArgumentError("selector", "expected a version or an alias")
            version = await self._version(conn, request.model_name, number)
        return pb.GetVersionResponse(model_version=version)

    @override
    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Any
    ) -> pb.ListVersionsResponse:
        check.check_name(request.model_name, "model_name")
        size = check.page_size(request.page_size)
        before = check.page_after(request.page_token)
        async with self._pool.acquire() as conn:
            await self._model(conn, request.model_name)
            versions = await self._store.versions(conn, request.model_name, before, size + 1)
        token = str(versions[size - 1].version) if len(versions) > size else ""
        return pb.ListVersionsResponse(model_versions=versions[:size], next_page_token=token)

    # aliases

    @override
    async def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.SetAliasResponse:
        check.check_name(request.model_name, "model_name")
        check.check_name(request.alias, "alias", what="alias")
        async with self._pool.acquire() as conn, conn.transaction():
            await self._model(conn, request.model_name, lock=True)
            await self._version(conn, request.model_name, request.version)
            current = await self._store.alias(conn, request.model_name, request.alias)
            if request.HasField("expected_version") and request.expected_version != (current or 0):
                raise FailedPreconditionError(
                    f"alias {request.alias!r} of model {request.model_name!r} points at "
                    f"{current or 'nothing'}, not at {request.expected_version or 'nothing'}"
                )
            if current != request.version:
                await self._store.set_alias(
                    conn, request.model_name, request.alias, request.version
                )
                await self._alias_changed(
                    conn,
                    request.model_name,
                    request.alias,
                    request.version,
                    current,
                    request.reason,
                )
            model = await self._model(conn, request.model_name)
        return pb.SetAliasResponse(model=model)

    @override
    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: Any
    ) -> pb.DeleteAliasResponse:
        check.check_name(request.model_name, "model_name")
        check.check_name(request.alias, "alias", what="alias")
        async with self._pool.acquire() as conn, conn.transaction():
            await self._model(conn, request.model_name, lock=True)
            current = await self._store.alias(conn, request.model_name, request.alias)
            if current is None:
                raise NotFoundError(f"alias {request.alias!r} of model {request.model_name!r}")
            await self._store.delete_alias(conn, request.model_name, request.alias)
            await self._alias_changed(
                conn, request.model_name, request.alias, 0, current, request.reason
            )
            model = await self._model(conn, request.model_name)
        return pb.DeleteAliasResponse(model=model)

    async def _alias_changed(
        self, conn: Tx, model: str, alias: str, version: int, previous: int | None, reason: str
    ) -> None:
        principal = current_principal().name
        action = pb.AUDIT_ACTION_ALIAS_SET if version else pb.AUDIT_ACTION_ALIAS_DELETED
        await self._audit(
            conn,
            action,
            model,
            version=version,
            alias=alias,
            previous_version=previous or 0,
            reason=reason,
        )
        await self._outbox.publish(
            conn,
            pb.AliasChanged(
                model_name=model,
                alias=alias,
                version=version,
                previous_version=previous or 0,
                changed_by=principal,
            ),
        )

    # audit log

    @override
    async def GetAuditLog(
        self, request: pb.GetAuditLogRequest, context: Any
    ) -> pb.GetAuditLogResponse:
        if request.model_name:
            check.check_name(request.model_name, "model_name")
        size = check.page_size(request.page_size)
        before = check.page_after(request.page_token)
        async with self._pool.acquire() as conn:
            rows = await self._store.audit_log(conn, request.model_name, before, size + 1)
        token = str(rows[size - 1][0]) if len(rows) > size else ""
        return pb.GetAuditLogResponse(
            entries=[entry for _, entry in rows[:size]], next_page_token=token
        )

    # predictions

    @override
    async def GetPredictionLineage(
        self, request: pb.GetPredictionLineageRequest, context: Any
    ) -> pb.GetPredictionLineageResponse:
        prediction_id = predictions.check_prediction_id(request.prediction_id)
        async with self._pool.acquire() as conn:
            record = await self._store.prediction(conn, prediction_id)
            if record is None:
                raise predictions.PredictionNotFoundError(prediction_id)
            version = await self._version(conn, record.model_name, record.model_version)
        run, note = await self._run(version.lineage.training_run_id)
        return pb.GetPredictionLineageResponse(
            prediction=record,
            model_version=version,
            task_attempts=predictions.attempts(version.lineage, run),
            attempts_note=note,
        )

    async def _run(self, run_id: str) -> tuple[spb.Run | None, str]:
        """The scheduler's run ``run_id``, or None and why it could not be read."""
        if not run_id:
            return None, "the version names no training run"
        try:
            scheduler = self._scheduler_stub()
        except StrataError as error:
            return None, f"the registry cannot ask the scheduler: {error}"
        try:
            reply = await scheduler.GetRun(spb.GetRunRequest(run_id=run_id))
        except grpc.aio.AioRpcError as error:
            log.warning(
                "the scheduler did not answer about a lineage's run",
                run_id=run_id,
                code=error.code().name,
                details=error.details(),
            )
            return None, (
                f"the scheduler at {self._scheduler_address} could not say where run "
                f"{run_id} ran: {error.code().name}: {error.details()}"
            )
        return reply.run, ""

    def _scheduler_stub(self) -> SchedulerServiceStub:
        """The scheduler's stub, its channel opened on the first lineage asked: a registry
        without a client token still serves everything else."""
        if self._scheduler is None:
            runtime = self._runtime
            self._scheduler = SchedulerServiceStub(
                channel(
                    self._scheduler_address,
                    runtime.auth,
                    mode=runtime.mode.mode,
                    deadline=SCHEDULER_DEADLINE,
                )
            )
        return self._scheduler

    @override
    async def ListPredictions(
        self, request: pb.ListPredictionsRequest, context: Any
    ) -> pb.ListPredictionsResponse:
        check.check_name(request.model_name, "model_name")
        size = check.page_size(request.page_size)
        after = predictions.page_position(request.page_token)
        served = (
            request.served_after.ToDatetime(tzinfo=UTC)
            if request.HasField("served_after")
            else None,
            request.served_before.ToDatetime(tzinfo=UTC)
            if request.HasField("served_before")
            else None,
        )
        async with self._pool.acquire() as conn:
            records = await self._store.predictions(
                conn, request.model_name, served, after, size + 1
            )
        token = predictions.page_token(records[size - 1]) if len(records) > size else ""
        return pb.ListPredictionsResponse(predictions=records[:size], next_page_token=token)

    # shared steps

    async def _model(self, conn: Conn, name: str, *, lock: bool = False) -> pb.Model:
        model = await self._store.model(conn, name, lock=lock)
        if model is None:
            raise NotFoundError(f"model {name!r}")
        return model

    async def _version(self, conn: Conn, model: str, number: int) -> pb.ModelVersion:
        version = await self._store.version(conn, model, number)
        if version is None:
            raise NotFoundError(f"version {number} of model {model!r}")
        return version

    async def _audit(
        self, conn: Conn, action: pb.AuditAction.ValueType, model: str, **fields: Any
    ) -> None:
        entry = pb.AuditEntry(
            principal=current_principal().name, action=action, model_name=model, **fields
        )
        await self._store.audit(conn, entry)


def _artifact(stored: StoredArtifact) -> pb.Artifact:
    artifact = pb.Artifact()
    artifact.CopyFrom(stored.artifact)
    artifact.uri = stored.key
    return artifact
