"""Where runs move: start one, apply an attempt's report, release retries whose
backoff ended. Each is one transaction holding the run's row lock, the new task
and run states, and the events announcing them (through the outbox), so a crash
leaves either all of it or none.

The decisions come from :mod:`strata.scheduler.domain.runs`; the SQL from
:mod:`strata.scheduler.store`; the event messages from :mod:`strata.scheduler.events`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf.message import Message
from prometheus_client import Counter

from strata.api.scheduler.v1.scheduler_pb2 import (
    RUN_STATE_RUNNING,
    RUN_STATE_UNSPECIFIED,
    RunCause,
    RunState,
    WorkflowSpec,
)
from strata.core.errors import InvalidArgumentError
from strata.core.inbox import claim
from strata.core.migrations import DbConnection
from strata.core.runtime import ServiceContext
from strata.scheduler.domain import runs as transitions
from strata.scheduler.domain.plan import RunPlan
from strata.scheduler.domain.runs import Decision, Report
from strata.scheduler.events import run_state_changed, task_requested, task_state_changed
from strata.scheduler.store import RunStore, StoredRun, StoredWorkflow, WorkflowStore

log = structlog.stdlib.get_logger(__name__)

INBOX_CONSUMER = "task-events"
"""The inbox name under which task events are claimed."""


def stale_reports_counter(context: ServiceContext) -> Counter:
    """``strata_scheduler_stale_reports_total``: reports fenced out, in this process."""
    return Counter(
        "strata_scheduler_stale_reports",
        "Task reports ignored because they came from an attempt that is no longer "
        "current (fencing), by event type.",
        ["event"],
        registry=context.metrics.registry,
    )


class Runs:
    """The runs of one scheduler schema; ``stale`` counts fenced-out reports."""

    def __init__(
        self,
        context: ServiceContext,
        *,
        stale: Counter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._context = context
        self._pool = context.pool
        self._workflows = WorkflowStore(context.pool, context.schema)
        self.store = RunStore(context.pool, context.schema)
        self._stale = stale
        self._clock = clock
        self._plans: dict[tuple[str, int], RunPlan] = {}

    async def trigger(
        self,
        workflow: StoredWorkflow,
        params: Mapping[str, Any],
        cause: RunCause,
        request_id: str,
    ) -> StoredRun:
        """Start a run of ``workflow``; with a ``request_id`` used before, that run instead."""
        plan = self._plan(workflow.spec, workflow.version)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            if request_id and (existing := await self.store.by_request(conn, request_id)):
                return existing
            decision = transitions.start(plan, params, now)
            run = StoredRun(
                run_id=str(uuid.uuid4()),
                workflow_name=workflow.spec.name,
                workflow_version=workflow.version,
                state=decision.run_state,
                cause=cause,
                params=dict(params),
                message=decision.message,
                created_at=now,
                started_at=now if decision.requested else None,
                finished_at=None if decision.run_state == RUN_STATE_RUNNING else now,
                tasks=decision.tasks,
            )
            if not await self.store.insert(conn, run, request_id or None):
                existing = await self.store.by_request(conn, request_id)
                assert existing is not None, "the insert conflicted on this request id"
                return existing
            await self._announce(conn, plan, run, RUN_STATE_UNSPECIFIED, decision)
        log.info("run started", run_id=run.run_id, workflow=run.workflow_name)
        return run

    async def report(self, run_id: str, event: Report, event_id: str, event_type: str) -> None:
        """Apply one attempt's report to its run, once per event id."""
        try:
            uuid.UUID(run_id)
        except ValueError:
            raise InvalidArgumentError("attempt.run_id", f"{run_id!r} is not a UUID") from None
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim(conn, self._context.schema, event_id, consumer=INBOX_CONSUMER):
                return
            run = await self.store.lock(conn, run_id)
            if run is None:
                log.warning("task event for an unknown run", run_id=run_id, event_type=event_type)
                return
            plan = await self._plan_of(run)
            try:
                decision = transitions.report(plan, run.params, run.tasks, event, self._clock())
            except ValueError as error:
                raise InvalidArgumentError("attempt.task_id", str(error)) from None
            if decision.stale:
                if self._stale is not None:
                    self._stale.labels(event=event_type).inc()
                log.info(
                    "stale task report ignored",
                    run_id=run_id,
                    task_id=event.task_id,
                    attempt=event.attempt,
                    event_type=event_type,
                )
                return
            if decision.changes:
                await self._save(conn, plan, run, decision)

    async def release_due(self, limit: int = 100) -> int:
        """Request the next attempt of tasks whose backoff ended; return how many runs moved."""
        moved = 0
        for run_id in await self.store.with_due_retries(self._clock(), limit):
            async with self._pool.acquire() as conn, conn.transaction():
                run = await self.store.lock(conn, run_id)
                if run is None:
                    continue
                plan = await self._plan_of(run)
                decision = transitions.release_due(plan, run.params, run.tasks, self._clock())
                if decision.changes:
                    await self._save(conn, plan, run, decision)
                    moved += 1
        return moved

    async def _save(
        self, conn: DbConnection, plan: RunPlan, run: StoredRun, decision: Decision
    ) -> None:
        now = self._clock()
        changed_ids = {c.task_id for c in decision.changes}
        updated = replace(
            run,
            state=decision.run_state,
            message=decision.message,
            started_at=run.started_at or (now if decision.requested else None),
            finished_at=run.finished_at
            or (None if decision.run_state == RUN_STATE_RUNNING else now),
            tasks=decision.tasks,
        )
        await self.store.save(
            conn, updated, [t for t in decision.tasks if t.task_id in changed_ids]
        )
        await self._announce(conn, plan, updated, run.state, decision)

    async def _announce(
        self,
        conn: DbConnection,
        plan: RunPlan,
        run: StoredRun,
        previous: RunState.ValueType,
        decision: Decision,
    ) -> None:
        """Publish the task changes, the attempts to run and the run's change, in that order."""
        events: list[Message] = [task_state_changed(run.run_id, c) for c in decision.changes]
        events += [task_requested(plan, run, task) for task in decision.requested]
        if run.state != previous:
            events.append(run_state_changed(run, previous))
        await self._context.outbox.publish(conn, *events)
        if run.state != previous and run.state != RUN_STATE_RUNNING:
            log.info("run finished", run_id=run.run_id, state=run.state, message=run.message)

    async def _plan_of(self, run: StoredRun) -> RunPlan:
        key = (run.workflow_name, run.workflow_version)
        if key not in self._plans:
            workflow = await self._workflows.get(*key)
            assert workflow is not None, "a run's workflow version is never deleted"
            return self._plan(workflow.spec, workflow.version)
        return self._plans[key]

    def _plan(self, spec: WorkflowSpec, version: int) -> RunPlan:
        """The plan of a workflow version; versions never change, so it is kept."""
        key = (spec.name, version)
        if key not in self._plans:
            self._plans[key] = RunPlan.of(spec)
        return self._plans[key]
