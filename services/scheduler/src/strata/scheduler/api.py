"""The scheduler's gRPC edge: converts SchedulerService messages, calls the domain and
the store, converts back. Validation and versioning rules live in the domain.

Methods not written yet (runs: TriggerRun, GetRun, ListRuns, WatchRun, CancelRun)
are inherited from the generated base class and answer UNIMPLEMENTED.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceServicer
from strata.core.errors import NotFoundError
from strata.core.rpc.auth import current_principal
from strata.core.runtime import ServiceContext
from strata.scheduler.domain.paging import name_after, page_size, token_of
from strata.scheduler.domain.validation import validate
from strata.scheduler.domain.versions import next_version, spec_sha256
from strata.scheduler.store import StoredWorkflow, WorkflowStore


class SchedulerApi(SchedulerServiceServicer):
    """SchedulerService over the workflow store of the service's schema."""

    def __init__(self, context: ServiceContext) -> None:
        self._workflows = WorkflowStore(context.pool, context.schema)

    @override
    async def ApplyWorkflow(
        self, request: pb.ApplyWorkflowRequest, context: object
    ) -> pb.ApplyWorkflowResponse:
        validate(request.spec)
        principal = current_principal().name
        if request.validate_only:
            return await self._preview(request, principal)
        applied = await self._workflows.apply(
            request.spec, paused=request.paused, applied_by=principal
        )
        return pb.ApplyWorkflowResponse(
            workflow=_workflow(applied.workflow), changed=applied.changed
        )

    @override
    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: object
    ) -> pb.GetWorkflowResponse:
        stored = await self._workflows.get(request.name, request.version)
        if stored is None:
            version = f" version {request.version}" if request.version else ""
            raise NotFoundError(f"workflow {request.name!r}{version}")
        return pb.GetWorkflowResponse(workflow=_workflow(stored))

    @override
    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: object
    ) -> pb.ListWorkflowsResponse:
        size = page_size(request.page_size)
        found = await self._workflows.list(after=name_after(request.page_token), limit=size + 1)
        page = found[:size]
        more = len(found) > size
        return pb.ListWorkflowsResponse(
            workflows=[_workflow(w) for w in page],
            next_page_token=token_of(page[-1].spec.name) if more else "",
        )

    async def _preview(
        self, request: pb.ApplyWorkflowRequest, principal: str
    ) -> pb.ApplyWorkflowResponse:
        """What an apply would store, storing nothing."""
        current = await self._workflows.get(request.spec.name)
        sha = spec_sha256(request.spec)
        outcome = next_version(
            current.version if current else None, current.spec_sha256 if current else None, sha
        )
        if current is not None and not outcome.changed:
            return pb.ApplyWorkflowResponse(workflow=_workflow(current), changed=False)
        preview = StoredWorkflow(
            spec=request.spec,
            version=outcome.version,
            spec_sha256=sha,
            applied_at=datetime.now(UTC),
            applied_by=principal,
            paused=request.paused,
        )
        return pb.ApplyWorkflowResponse(workflow=_workflow(preview), changed=True)


def _workflow(stored: StoredWorkflow) -> pb.Workflow:
    applied_at = Timestamp()
    applied_at.FromDatetime(stored.applied_at)
    return pb.Workflow(
        spec=stored.spec,
        version=stored.version,
        spec_sha256=stored.spec_sha256,
        applied_at=applied_at,
        applied_by=stored.applied_by,
        paused=stored.paused,
    )
