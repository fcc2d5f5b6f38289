"""The scheduler's gRPC edge: converts SchedulerService messages, calls the domain and
the store, converts back. Validation and versioning rules live in the domain.

WatchRun polls the run's change log (``run_changes``, written with each change)
every :data:`WATCH_POLL` seconds rather than holding a LISTEN connection per
stream: a watcher is a person's terminal, for whom a fifth of a second is
invisible, and a poll holds a pooled connection only for one indexed query, so a
hundred watchers on any replica cost no dedicated connections.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceServicer
from strata.core.errors import InvalidArgumentError, NotFoundError
from strata.core.paging import page_size, position_after, token_of
from strata.core.rpc.auth import current_principal
from strata.core.runtime import ServiceContext
from strata.core.versions import next_version, spec_sha256
from strata.scheduler.clock import clock_of
from strata.scheduler.domain.paging import run_after, run_token
from strata.scheduler.domain.runs import RUN_TERMINAL, TaskStatus
from strata.scheduler.domain.validation import validate
from strata.scheduler.events import resources_message, usage_message
from strata.scheduler.runs import Runs
from strata.scheduler.store import StoredRun, StoredWorkflow, WorkflowStore
from strata.scheduler.triggers import Triggers

WATCH_POLL = 0.2
"""Seconds between two reads of a watched run's change log."""


class SchedulerApi(SchedulerServiceServicer):
    """SchedulerService over the workflow store of the service's schema."""

    def __init__(self, context: ServiceContext) -> None:
        self._workflows = WorkflowStore(context.pool, context.schema)
        self._runs = Runs(context, clock=clock_of())
        self._triggers = Triggers(context, self._runs)

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
        await self._triggers.begin_schedules(applied.workflow)
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
        found = await self._workflows.list(after=position_after(request.page_token), limit=size + 1)
        page = found[:size]
        more = len(found) > size
        return pb.ListWorkflowsResponse(
            workflows=[_workflow(w) for w in page],
            next_page_token=token_of(page[-1].spec.name) if more else "",
        )

    @override
    async def TriggerRun(
        self, request: pb.TriggerRunRequest, context: object
    ) -> pb.TriggerRunResponse:
        if not request.workflow_name:
            raise InvalidArgumentError("workflow_name", "is empty: name the workflow to run")
        workflow = await self._workflows.get(request.workflow_name)
        if workflow is None:
            raise NotFoundError(f"workflow {request.workflow_name!r}")
        params = {
            **json_format.MessageToDict(workflow.spec.default_params),
            **json_format.MessageToDict(request.params),
        }
        cause = pb.RunCause(principal=current_principal().name)
        run = await self._runs.trigger(workflow, params, cause, request.request_id)
        return pb.TriggerRunResponse(run=_run(run))

    @override
    async def GetRun(self, request: pb.GetRunRequest, context: object) -> pb.GetRunResponse:
        run = await self._runs.store.get(_run_id(request.run_id))
        if run is None:
            raise NotFoundError(f"run {request.run_id!r}")
        return pb.GetRunResponse(run=_run(run))

    @override
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: object
    ) -> pb.CancelRunResponse:
        principal = current_principal().name
        reason = request.reason or f"cancelled by {principal}"
        run = await self._runs.cancel(_run_id(request.run_id), reason)
        return pb.CancelRunResponse(run=_run(run))

    @override
    async def BackfillWorkflow(
        self, request: pb.BackfillWorkflowRequest, context: object
    ) -> pb.BackfillWorkflowResponse:
        if not request.workflow_name:
            raise InvalidArgumentError("workflow_name", "is empty: name the workflow to backfill")
        for field in ("from_time", "to_time"):
            if not request.HasField(field):
                raise InvalidArgumentError(field, "is not set: give the range to backfill")
        if request.max_concurrent < 0:
            raise InvalidArgumentError(
                "max_concurrent",
                f"must be 0 (the workflow's limit) or more, got {request.max_concurrent}",
            )
        workflow = await self._workflows.get(request.workflow_name)
        if workflow is None:
            raise NotFoundError(f"workflow {request.workflow_name!r}")
        runs, created = await self._triggers.backfill(
            workflow,
            request.from_time.ToDatetime(tzinfo=UTC),
            request.to_time.ToDatetime(tzinfo=UTC),
            request.max_concurrent,
            request.dataset,
        )
        return pb.BackfillWorkflowResponse(
            runs=[_run(replace(r, tasks=())) for r in runs], created=created
        )

    @override
    async def WatchRun(
        self, request: pb.WatchRunRequest, context: object
    ) -> AsyncIterator[pb.WatchRunResponse]:
        found = await self._runs.store.snapshot(_run_id(request.run_id))
        if found is None:
            raise NotFoundError(f"run {request.run_id!r}")
        run, seen = found
        yield pb.WatchRunResponse(occurred_at=_timestamp(datetime.now(UTC)), snapshot=_run(run))
        if run.state in RUN_TERMINAL:
            return
        while True:
            for position, raw in await self._runs.store.changes_after(run.run_id, seen):
                seen = position
                change = pb.WatchRunResponse.FromString(raw)
                yield change
                if change.run_state_changed.state in RUN_TERMINAL:
                    return
            await asyncio.sleep(WATCH_POLL)

    @override
    async def ListRuns(self, request: pb.ListRunsRequest, context: object) -> pb.ListRunsResponse:
        size = page_size(request.page_size)
        found = await self._runs.store.newest(
            workflow_name=request.workflow_name,
            states=list(request.states),
            after=run_after(request.page_token),
            limit=size + 1,
        )
        page = found[:size]
        more = len(found) > size
        return pb.ListRunsResponse(
            runs=[_run(r) for r in page],
            next_page_token=run_token(page[-1].created_at, page[-1].run_id) if more else "",
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


def _run_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgumentError("run_id", f"{value!r} is not a UUID") from None


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


def _run(stored: StoredRun) -> pb.Run:
    return pb.Run(
        run_id=stored.run_id,
        workflow_name=stored.workflow_name,
        workflow_version=stored.workflow_version,
        state=stored.state,
        cause=stored.cause,
        params=_struct(stored.params),
        created_at=_timestamp(stored.created_at),
        started_at=_timestamp(stored.started_at),
        finished_at=_timestamp(stored.finished_at),
        tasks=[_task(t) for t in stored.tasks],
        message=stored.message,
    )


def _task(task: TaskStatus) -> pb.TaskInstance:
    return pb.TaskInstance(
        task_id=task.task_id,
        state=task.state,
        attempt=task.attempt,
        node_id=task.node_id,
        started_at=_timestamp(task.started_at),
        finished_at=_timestamp(task.finished_at),
        outputs=_struct(dict(task.outputs or {})),
        message=task.message,
        requested=resources_message(task.requested),
        limits=resources_message(task.limits),
        reserved=resources_message(task.reserved),
        peak_usage=usage_message(task.peak_usage),
        evictions=task.evictions,
        losses=task.losses,
    )


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _struct(values: dict[str, Any]) -> Struct:
    return json_format.ParseDict(values, Struct())
