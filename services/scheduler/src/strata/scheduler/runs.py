"""Where runs move: create one (started, or QUEUED while its lane is full), apply a
batch of attempts' reports, release retries whose backoff ended, cancel one. Each is one
transaction holding the run's row lock, the new task and run states, the events
announcing them (through the outbox) and the changes WatchRun streams, so a crash
leaves either all of it or none. When an active run ends, the oldest QUEUED run of
its lane starts in the same transaction.

The decisions come from :mod:`strata.scheduler.domain.runs`; the SQL from
:mod:`strata.scheduler.store`; the event messages from :mod:`strata.scheduler.events`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.scheduler.v1.scheduler_pb2 import (
    RUN_STATE_CANCELLING,
    RUN_STATE_QUEUED,
    RUN_STATE_UNSPECIFIED,
    RunCause,
    RunState,
    RunStateChanged,
    TaskStateChanged,
    WatchRunResponse,
)
from strata.core.errors import InvalidArgumentError, NotFoundError
from strata.core.inbox import claim_events
from strata.core.migrations import DbConnection
from strata.core.runtime import ServiceContext
from strata.scheduler.clock import Clock
from strata.scheduler.domain import runs as transitions
from strata.scheduler.domain.plan import RunPlan
from strata.scheduler.domain.runs import RUN_ACTIVE, RUN_TERMINAL, Decision, Report
from strata.scheduler.domain.triggers import admits
from strata.scheduler.events import (
    run_state_changed,
    task_cancel_requested,
    task_requested,
    task_state_changed,
)
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
        clock: Clock = lambda: datetime.now(UTC),
        max_evictions: int = transitions.MAX_EVICTIONS,
        max_losses: int = transitions.MAX_LOSSES,
    ) -> None:
        """``max_evictions``, ``max_losses``: how many times a task run may be evicted for
        node memory pressure, and lost with its node (see :mod:`strata.scheduler.domain.runs`)."""
        self._context = context
        self._max_evictions = max_evictions
        self._max_losses = max_losses
        self._pool = context.pool
        self._workflows = WorkflowStore(context.pool, context.schema)
        self.store = RunStore(context.pool, context.schema)
        self._stale = stale
        self._clock = clock
        self._plans: dict[tuple[str, int], RunPlan] = {}

    def now(self) -> datetime:
        return self._clock()

    async def trigger(
        self,
        workflow: StoredWorkflow,
        params: Mapping[str, Any],
        cause: RunCause,
        request_id: str,
    ) -> StoredRun:
        """Start a run of ``workflow``; with a ``request_id`` used before, that run instead."""
        async with self._pool.acquire() as conn, conn.transaction():
            run, _ = await self.create(conn, workflow, params, cause, request_id=request_id or None)
        return run

    async def create(
        self,
        conn: DbConnection,
        workflow: StoredWorkflow,
        params: Mapping[str, Any],
        cause: RunCause,
        *,
        request_id: str | None = None,
        trigger_key: str | None = None,
        lane: str = "",
        lane_limit: int | None = None,
    ) -> tuple[StoredRun, bool]:
        """Create a run in the caller's transaction; False and the existing run when
        ``request_id`` or ``trigger_key`` made one before.

        The run starts at once when its lane (default: the workflow's
        max_active_runs) has room, else it is QUEUED.
        """
        if request_id and (existing := await self.store.by_request(conn, request_id)):
            return existing, False
        if trigger_key and (existing := await self.store.by_trigger(conn, trigger_key)):
            return existing, False
        plan = self._plan(workflow)
        limit = workflow.spec.max_active_runs if lane_limit is None else lane_limit
        now = self._clock()
        admitted = True
        if limit > 0:  # without a limit, runs of one workflow need not wait for each other
            await self.store.lock_lanes(conn, workflow.spec.name)
            active = await self.store.active_in_lane(conn, workflow.spec.name, lane)
            admitted = admits(limit, active)
        decision = transitions.start(plan, params, now) if admitted else transitions.queued(plan)
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
            finished_at=now if decision.run_state in RUN_TERMINAL else None,
            tasks=decision.tasks,
            lane=lane,
            lane_limit=limit,
        )
        if not await self.store.insert(conn, run, request_id, trigger_key):
            existing = None
            if request_id:
                existing = await self.store.by_request(conn, request_id)
            if existing is None and trigger_key:
                existing = await self.store.by_trigger(conn, trigger_key)
            assert existing is not None, "the insert conflicted on its request id or trigger key"
            return existing, False
        await self._announce(conn, plan, run, RUN_STATE_UNSPECIFIED, decision)
        log.info("run created", run_id=run.run_id, workflow=run.workflow_name, state=run.state)
        return run, True

    async def cancel(self, run_id: str, reason: str) -> StoredRun:
        """Cancel a run; a run already terminal or cancelling is returned unchanged."""
        async with self._pool.acquire() as conn, conn.transaction():
            run = await self.store.lock(conn, run_id)
            if run is None:
                raise NotFoundError(f"run {run_id!r}")
            if run.state in RUN_TERMINAL or run.state == RUN_STATE_CANCELLING:
                return run
            plan = await self._plan_of(run)
            decision = transitions.cancel(plan, run.params, run.tasks, reason, self._clock())
            updated = await self._save(conn, plan, run, decision)
        log.info("run cancelled", run_id=run_id, state=updated.state, reason=reason)
        return updated

    async def reports(self, batch: Sequence[tuple[Delivered, Envelope]]) -> None:
        """Apply a batch of attempts' reports in one transaction, once per event id.

        Each run is locked once, in run id order, and its reports applied in batch
        order (the events of one run share a key, so the batch keeps their order);
        then its state, the events announcing every step and its WatchRun changes
        are written at once. A report naming a run that is not a UUID, or a task its
        workflow lacks, fails the whole batch with InvalidArgumentError: the Bus then
        hands the events over one by one and dead-letters that one alone.

        Runs are locked in a stable order, but a run that ends locks its workflow's
        lanes and may start a QUEUED run another batch holds; Postgres breaks such a
        rare cycle by aborting one transaction, which the Bus retries.
        """
        for delivered, _ in batch:
            _check_run_id(delivered.run_id)
        async with self._pool.acquire() as conn, conn.transaction():
            fresh = await claim_events(conn, self._context.schema, INBOX_CONSUMER, batch)
            by_run: dict[str, list[Delivered]] = {}
            for delivered, _ in fresh:
                by_run.setdefault(delivered.run_id, []).append(delivered)
            for run_id in sorted(by_run):
                await self._apply(conn, run_id, by_run[run_id])

    async def _apply(self, conn: DbConnection, run_id: str, reports: list[Delivered]) -> None:
        """Apply ``reports`` of one run, in order, and save the run once."""
        run = await self.store.lock(conn, run_id)
        if run is None:
            for delivered in reports:
                log.warning(
                    "task event for an unknown run", run_id=run_id, event_type=delivered.event_type
                )
            return
        plan = await self._plan_of(run)
        decisions: list[Decision] = []
        current = run
        for delivered in reports:
            event = delivered.report
            cancel_reason = current.message if current.state == RUN_STATE_CANCELLING else None
            try:
                decision = transitions.report(
                    plan,
                    current.params,
                    current.tasks,
                    event,
                    self._clock(),
                    cancel_reason=cancel_reason,
                    max_evictions=self._max_evictions,
                    max_losses=self._max_losses,
                )
            except ValueError as error:
                raise InvalidArgumentError("attempt.task_id", str(error)) from None
            if decision.stale or current.state == RUN_STATE_QUEUED:
                if self._stale is not None:
                    self._stale.labels(event=delivered.event_type).inc()
                log.info(
                    "stale task report ignored",
                    run_id=run_id,
                    task_id=event.task_id,
                    attempt=event.attempt,
                    event_type=delivered.event_type,
                )
                continue
            if decision.changes:
                decisions.append(decision)
                current = self._advanced(current, decision)
        if decisions:
            await self._save(conn, plan, run, *decisions)

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

    async def prune_changes(self, retention: timedelta) -> int:
        """Forget what WatchRun would stream of runs finished more than ``retention``
        ago; return how many changes went.

        A watcher of a finished run only needs its snapshot (it ends there), so the
        changes are kept for watchers that were behind when the run ended.
        """
        pruned = await self.store.prune_changes(self._clock() - retention)
        if pruned:
            log.info("run changes pruned", changes=pruned, retention=str(retention))
        return pruned

    async def _save(
        self, conn: DbConnection, plan: RunPlan, run: StoredRun, *decisions: Decision
    ) -> StoredRun:
        """Store and announce ``decisions``, taken one after the other from ``run``;
        start the next QUEUED run of the lane when this one stopped being active."""
        current = run
        changed_ids: set[str] = set()
        events: list[Message] = []
        watched: list[TaskStateChanged | RunStateChanged] = []
        for decision in decisions:
            updated = self._advanced(current, decision)
            changed_ids.update(c.task_id for c in decision.changes)
            step_events, step_watched = _announcement(plan, updated, current.state, decision)
            events += step_events
            watched += step_watched
            current = updated
        await self.store.save(conn, current, [t for t in current.tasks if t.task_id in changed_ids])
        await self._publish(conn, current, run.state, events, watched)
        if run.state in RUN_ACTIVE and current.state in RUN_TERMINAL:
            await self._start_queued(conn, run.workflow_name, run.lane)
        return current

    def _advanced(self, run: StoredRun, decision: Decision) -> StoredRun:
        """``run`` after ``decision``: its state, message, times and tasks."""
        now = self._clock()
        return replace(
            run,
            state=decision.run_state,
            message=decision.message,
            started_at=run.started_at or (now if decision.requested else None),
            finished_at=run.finished_at or (now if decision.run_state in RUN_TERMINAL else None),
            tasks=decision.tasks,
        )

    async def _start_queued(self, conn: DbConnection, workflow_name: str, lane: str) -> None:
        """Start the lane's QUEUED runs, oldest first, while the lane has room."""
        await self.store.lock_lanes(conn, workflow_name)
        while True:
            queued = await self.store.oldest_queued(conn, workflow_name, lane)
            if queued is None:
                return
            active = await self.store.active_in_lane(conn, workflow_name, lane)
            if not admits(queued.lane_limit, active):
                return
            plan = await self._plan_of(queued)
            decision = transitions.start(plan, queued.params, self._clock())
            started = await self._save(conn, plan, queued, decision)
            log.info("queued run started", run_id=started.run_id, workflow=workflow_name)

    async def _announce(
        self,
        conn: DbConnection,
        plan: RunPlan,
        run: StoredRun,
        previous: RunState.ValueType,
        decision: Decision,
    ) -> None:
        """Publish and record what one step of ``run`` changed."""
        events, watched = _announcement(plan, run, previous, decision)
        await self._publish(conn, run, previous, events, watched)

    async def _publish(
        self,
        conn: DbConnection,
        run: StoredRun,
        previous: RunState.ValueType,
        events: Sequence[Message],
        watched: Sequence[TaskStateChanged | RunStateChanged],
    ) -> None:
        """Put ``events`` in the outbox and ``watched`` in the run's WatchRun changes."""
        await self._context.outbox.publish(conn, *events)
        now = self._clock()
        await self.store.record_changes(conn, run.run_id, [_watched(c, now) for c in watched])
        if run.state != previous and run.state in RUN_TERMINAL:
            log.info("run finished", run_id=run.run_id, state=run.state, message=run.message)

    async def _plan_of(self, run: StoredRun) -> RunPlan:
        key = (run.workflow_name, run.workflow_version)
        if key not in self._plans:
            workflow = await self._workflows.get(*key)
            assert workflow is not None, "a run's workflow version is never deleted"
            return self._plan(workflow)
        return self._plans[key]

    def _plan(self, workflow: StoredWorkflow) -> RunPlan:
        """The plan of a workflow version; versions never change, so it is kept."""
        key = (workflow.spec.name, workflow.version)
        if key not in self._plans:
            self._plans[key] = RunPlan.of(workflow.spec, applied_by=workflow.applied_by)
        return self._plans[key]


@dataclass(frozen=True)
class Delivered:
    """One report off ``strata.tasks.events``: its run, what it says, its event type."""

    run_id: str
    report: Report
    event_type: str


def _check_run_id(run_id: str) -> None:
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise InvalidArgumentError("attempt.run_id", f"{run_id!r} is not a UUID") from None


def _announcement(
    plan: RunPlan, run: StoredRun, previous: RunState.ValueType, decision: Decision
) -> tuple[list[Message], list[TaskStateChanged | RunStateChanged]]:
    """The events announcing one step that left ``run`` as it is (the task changes,
    the attempts to run, the attempts to stop and the run's change, in that order)
    and the changes WatchRun streams."""
    changes: list[TaskStateChanged | RunStateChanged] = [
        task_state_changed(run.run_id, c) for c in decision.changes
    ]
    if run.state != previous:
        changes.append(run_state_changed(run, previous))
    events: list[Message] = [*changes[: len(decision.changes)]]
    events += [task_requested(plan, run, task) for task in decision.requested]
    events += [task_cancel_requested(run.run_id, task, run.message) for task in decision.to_stop]
    events += changes[len(decision.changes) :]
    return events, changes


def _watched(change: TaskStateChanged | RunStateChanged, now: datetime) -> bytes:
    """``change`` as the WatchRunResponse a watcher of its run gets."""
    occurred_at = Timestamp()
    occurred_at.FromDatetime(now)
    if isinstance(change, RunStateChanged):
        message = WatchRunResponse(occurred_at=occurred_at, run_state_changed=change)
    else:
        message = WatchRunResponse(occurred_at=occurred_at, task_state_changed=change)
    return message.SerializeToString()
