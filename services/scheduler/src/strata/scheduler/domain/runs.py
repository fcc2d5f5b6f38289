"""The run state machine: from a run's task states and what just happened, the next
task states, the attempts to request, and the run's state. No I/O.

Four things move a run: it starts (:func:`start`, or :func:`queued` while its
lane is full), a task attempt reports (:func:`report`: placed, started, finished,
failed, lost), a retry's backoff ends (:func:`release_due`), or it is cancelled
(:func:`cancel`). Each returns a :class:`Decision` holding the whole new state and
the list of changes, which the caller stores and announces together.

Cancelling: tasks not out in the world (pending, waiting for a retry) become
CANCELLED at once; attempts out in the world are told to stop
(:attr:`Decision.to_stop`) and the run stays CANCELLING until each has reported.
While cancelling, a failed or lost attempt is CANCELLED, never retried, and no
new attempt is requested; a finished one keeps its success.

Fencing: a report whose attempt is not the task's current attempt, or that comes
for a task already waiting for a retry or finished, is stale. It changes nothing
and the decision says so, so the caller can count it. A late report from an
attempt the scheduler already gave up on (lost, failed) can thus never overwrite
a newer attempt.

After any change, pending tasks whose upstream tasks are all terminal are
settled in DAG order by their trigger rule and then their condition:

- ALL_SUCCEEDED: all upstream SUCCEEDED -> run; any FAILED/UPSTREAM_FAILED ->
  UPSTREAM_FAILED; otherwise (an upstream SKIPPED or CANCELLED) -> SKIPPED, so a
  skip propagates down a chain.
- ALL_DONE: run, whatever the upstream outcomes.
- ANY_FAILED: run when an upstream FAILED or UPSTREAM_FAILED; otherwise SKIPPED.

A task allowed to run whose condition is false is SKIPPED; one whose condition
cannot be evaluated (it reads an output that is absent) FAILED, naming why.

Evictions: an attempt its agent evicted for node memory pressure (the node's attempts
together outgrew it; placement reserved below their peaks) failed through no fault of
the task, so it is retried without spending one of the task's retries: the task
counts its evictions, and only attempts not evicted count against the retry policy's
``max_attempts``. So that a task cannot be evicted forever, a task run may be evicted
at most ``max_evictions`` times; the next eviction fails it, naming them.

Losses: an attempt lost with its node (its agent crashed or was killed, its pod
deleted or preempted) is retried the same way, counted apart (``losses``, at most
``max_losses``): the task's retries are for its own failures, as Flyte keeps system
retries apart from user retries. A task that keeps taking its node down still ends,
once past the cap.

Each task also carries what it asked for (from the plan), and for its latest attempt
the limits and reservation the provisioner placed it with and its peak usage once it
ended; a new attempt starts without them, so they never describe an older attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from strata.api.scheduler.v1.scheduler_pb2 import (
    RUN_STATE_CANCELLED,
    RUN_STATE_CANCELLING,
    RUN_STATE_FAILED,
    RUN_STATE_QUEUED,
    RUN_STATE_RUNNING,
    RUN_STATE_SUCCEEDED,
    TASK_STATE_CANCELLED,
    TASK_STATE_FAILED,
    TASK_STATE_PENDING,
    TASK_STATE_PLACED,
    TASK_STATE_REQUESTED,
    TASK_STATE_RETRY_WAIT,
    TASK_STATE_RUNNING,
    TASK_STATE_SKIPPED,
    TASK_STATE_SUCCEEDED,
    TASK_STATE_UPSTREAM_FAILED,
    TRIGGER_RULE_ALL_DONE,
    TRIGGER_RULE_ANY_FAILED,
    RunCause,
    RunState,
    TaskState,
    TriggerRule,
)
from strata.scheduler.domain.plan import RunPlan, TaskPlan
from strata.scheduler.domain.resources import Resources, Usage

Json = Mapping[str, Any]

TERMINAL = frozenset(
    {
        TASK_STATE_SUCCEEDED,
        TASK_STATE_FAILED,
        TASK_STATE_SKIPPED,
        TASK_STATE_UPSTREAM_FAILED,
        TASK_STATE_CANCELLED,
    }
)
ACTIVE = frozenset({TASK_STATE_REQUESTED, TASK_STATE_PLACED, TASK_STATE_RUNNING})
"""States in which an attempt is out in the world and may report."""
_FAILED = frozenset({TASK_STATE_FAILED, TASK_STATE_UPSTREAM_FAILED})
RUN_TERMINAL = frozenset({RUN_STATE_SUCCEEDED, RUN_STATE_FAILED, RUN_STATE_CANCELLED})
RUN_ACTIVE = frozenset({RUN_STATE_RUNNING, RUN_STATE_CANCELLING})
"""Run states that count against their lane's limit."""
MAX_EVICTIONS = 3
"""Evictions a task run may have by default; the one after fails the task."""
MAX_LOSSES = 3
"""Attempts of a task run that may be lost with their node by default; the loss after
fails the task."""


@dataclass(frozen=True)
class TaskStatus:
    """One task of a run as the scheduler records it, with its latest attempt."""

    task_id: str
    state: TaskState.ValueType = TASK_STATE_PENDING
    attempt: int = 0
    node_id: str = ""
    outputs: Json | None = None
    message: str = ""
    due_at: datetime | None = None
    """When the next attempt may be requested, while RETRY_WAIT."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    requested: Resources | None = None
    """What the task asks for (its spec); None for runs recorded before it was kept."""
    limits: Resources | None = None
    """Hard limit of the latest attempt, once placed."""
    reserved: Resources | None = None
    """What placement reserved for the latest attempt, once placed."""
    peak_usage: Usage | None = None
    """Peak usage of the latest attempt, once it ended and its agent measured it."""
    evictions: int = 0
    """Attempts of this task run evicted for node memory pressure: they spend no retry."""
    losses: int = 0
    """Attempts of this task run lost with their node: they spend no retry."""


@dataclass(frozen=True)
class TaskChange:
    """One task moving from one state to another: what TaskStateChanged announces."""

    task_id: str
    attempt: int
    previous: TaskState.ValueType
    state: TaskState.ValueType
    node_id: str
    message: str


@dataclass(frozen=True)
class Decision:
    """The run after one step: every task, what changed, what to request, the run state."""

    tasks: tuple[TaskStatus, ...]
    changes: tuple[TaskChange, ...]
    requested: tuple[TaskStatus, ...]
    """Attempts that became REQUESTED in this step: one TaskRequested each."""
    run_state: RunState.ValueType
    message: str
    stale: bool = False
    """The report was fenced out (older attempt, or a task no longer waiting for it)."""
    to_stop: tuple[TaskStatus, ...] = ()
    """Attempts out in the world that the cancel asks to stop: one TaskCancelRequested each."""


@dataclass(frozen=True)
class Report:
    """What an attempt of a task says happened; subclasses name what."""

    task_id: str
    attempt: int
    node_id: str = ""


@dataclass(frozen=True)
class Placed(Report):
    limits: Resources | None = None
    reserved: Resources | None = None


@dataclass(frozen=True)
class Started(Report):
    pass


@dataclass(frozen=True)
class Finished(Report):
    outputs: Json | None = None
    peak_usage: Usage | None = None


@dataclass(frozen=True)
class Failed(Report):
    message: str = ""
    retryable: bool = True
    """False for failures a retry cannot help (unschedulable, cancelled)."""
    peak_usage: Usage | None = None
    evicted: bool = False
    """Evicted for node memory pressure: retried without spending a retry."""


@dataclass(frozen=True)
class Lost(Report):
    reason: str = ""


def start(plan: RunPlan, params: Json, now: datetime) -> Decision:
    """A new run: every task PENDING, then the first ones requested (or skipped)."""
    tasks = {tid: _pending(plan, tid) for tid in plan.order}
    return _Step(plan, params, now, tasks).settle()


def queued(plan: RunPlan) -> Decision:
    """A new run waiting for its lane: every task PENDING, nothing requested."""
    tasks = tuple(_pending(plan, tid) for tid in plan.order)
    return Decision(tasks=tasks, changes=(), requested=(), run_state=RUN_STATE_QUEUED, message="")


def _pending(plan: RunPlan, task_id: str) -> TaskStatus:
    return TaskStatus(task_id, requested=plan.tasks[task_id].requested)


def runs_for(cause: RunCause, applied_by: str) -> str:
    """Who a run's attempts run for (the user a queue's per-user cap counts): the
    principal who started the run by hand, else whoever applied the workflow version
    its trigger ran."""
    if cause.WhichOneof("kind") == "principal" and cause.principal:
        return cause.principal
    return applied_by


def cancel(
    plan: RunPlan, params: Json, tasks: tuple[TaskStatus, ...], reason: str, now: datetime
) -> Decision:
    """Cancel a run that is QUEUED or RUNNING (see the module docstring)."""
    step = _Step(plan, params, now, {t.task_id: t for t in tasks}, cancel_reason=reason)
    to_stop = []
    for tid in plan.order:
        task = step.tasks[tid]
        if task.state in ACTIVE:
            to_stop.append(task)
        elif task.state not in TERMINAL:
            step.move(task, TASK_STATE_CANCELLED, message=reason, due_at=None, finished_at=now)
    return replace(step.settle(), to_stop=tuple(to_stop))


def report(
    plan: RunPlan,
    params: Json,
    tasks: tuple[TaskStatus, ...],
    event: Report,
    now: datetime,
    *,
    cancel_reason: str | None = None,
    max_evictions: int = MAX_EVICTIONS,
    max_losses: int = MAX_LOSSES,
) -> Decision:
    """Apply one attempt's report; ValueError if it names a task the workflow lacks.

    ``cancel_reason`` is set when the run is CANCELLING; ``max_evictions`` and
    ``max_losses``: how many evictions and losses a task run may have (see the module
    docstring).
    """
    step = _Step(
        plan,
        params,
        now,
        {t.task_id: t for t in tasks},
        cancel_reason=cancel_reason,
        max_evictions=max_evictions,
        max_losses=max_losses,
    )
    current = step.tasks.get(event.task_id)
    if current is None:
        raise ValueError(f"task {event.task_id!r} is not a task of workflow {plan.workflow.name!r}")
    if event.attempt != current.attempt or current.state not in ACTIVE:
        return step.settle(stale=True)
    node = event.node_id or current.node_id
    if isinstance(event, Placed):
        if current.state == TASK_STATE_REQUESTED:
            step.move(
                current,
                TASK_STATE_PLACED,
                node_id=node,
                limits=event.limits,
                reserved=event.reserved,
            )
    elif isinstance(event, Started):
        if current.state != TASK_STATE_RUNNING:
            step.move(current, TASK_STATE_RUNNING, node_id=node, started_at=now)
    elif isinstance(event, Finished):
        step.move(
            current,
            TASK_STATE_SUCCEEDED,
            node_id=node,
            outputs=dict(event.outputs or {}),
            finished_at=now,
            peak_usage=event.peak_usage or current.peak_usage,
        )
    elif isinstance(event, Failed):
        peak = event.peak_usage or current.peak_usage
        step.fail(
            replace(current, node_id=node, peak_usage=peak),
            event.message,
            retryable=event.retryable,
            evicted=event.evicted,
        )
    elif isinstance(event, Lost):
        step.lost(replace(current, node_id=node), f"lost: {event.reason}")
    return step.settle()


def release_due(
    plan: RunPlan, params: Json, tasks: tuple[TaskStatus, ...], now: datetime
) -> Decision:
    """Request the next attempt of every task whose retry backoff has ended."""
    return _Step(plan, params, now, {t.task_id: t for t in tasks}).settle()


def run_state(
    tasks: Mapping[str, TaskStatus], cancel_reason: str | None = None
) -> tuple[RunState.ValueType, str]:
    """The run's state from its tasks, with the reason when it FAILED or is cancelled."""
    if cancel_reason is not None:
        if any(t.state not in TERMINAL for t in tasks.values()):
            return RUN_STATE_CANCELLING, cancel_reason
        return RUN_STATE_CANCELLED, cancel_reason
    if any(t.state not in TERMINAL for t in tasks.values()):
        return RUN_STATE_RUNNING, ""
    failed = [t for t in tasks.values() if t.state == TASK_STATE_FAILED]
    if failed:
        first = failed[0]
        return RUN_STATE_FAILED, f"task {first.task_id!r} failed: {first.message}"
    return RUN_STATE_SUCCEEDED, ""


class _Step:
    """The working state of one decision: tasks by id and the changes so far."""

    def __init__(
        self,
        plan: RunPlan,
        params: Json,
        now: datetime,
        tasks: dict[str, TaskStatus],
        *,
        cancel_reason: str | None = None,
        max_evictions: int = MAX_EVICTIONS,
        max_losses: int = MAX_LOSSES,
    ) -> None:
        self.cancel_reason = cancel_reason
        self.max_evictions = max_evictions
        self.max_losses = max_losses
        self.plan = plan
        self.params = params
        self.now = now
        self.tasks = tasks
        self.changes: list[TaskChange] = []
        self.requested: list[str] = []

    def move(self, task: TaskStatus, state: TaskState.ValueType, **fields: Any) -> TaskStatus:
        moved = replace(task, state=state, **fields)
        self.tasks[task.task_id] = moved
        self.changes.append(
            TaskChange(task.task_id, moved.attempt, task.state, state, moved.node_id, moved.message)
        )
        if state == TASK_STATE_REQUESTED:
            self.requested.append(task.task_id)
        return moved

    def fail(
        self, task: TaskStatus, message: str, *, retryable: bool, evicted: bool = False
    ) -> None:
        if self.cancel_reason is not None:
            self.move(task, TASK_STATE_CANCELLED, message=message, finished_at=self.now)
            return
        retry = self.plan.tasks[task.task_id].retry
        if evicted:
            self._disrupted(replace(task, evictions=task.evictions + 1), message, lost=False)
            return
        spent = task.attempt - task.evictions - task.losses
        if retryable and spent < retry.max_attempts:
            due = self.now + retry.backoff(spent)
            self.move(task, TASK_STATE_RETRY_WAIT, message=message, due_at=due)
        else:
            self.move(task, TASK_STATE_FAILED, message=message, finished_at=self.now)

    def lost(self, task: TaskStatus, message: str) -> None:
        """An attempt lost with its node: retried without spending a retry, up to
        :attr:`max_losses` losses."""
        if self.cancel_reason is not None:
            self.move(task, TASK_STATE_CANCELLED, message=message, finished_at=self.now)
            return
        self._disrupted(replace(task, losses=task.losses + 1), message, lost=True)

    def _disrupted(self, task: TaskStatus, message: str, *, lost: bool) -> None:
        """Retry an attempt that ended through no fault of its task (evicted, or ``lost``
        with its node) without spending a retry, backing off by how often that happened;
        past the cap on it, fail the task naming them."""
        if lost:
            times, cap = task.losses, self.max_losses
            past_cap = f"lost with its node {times} times, more than the {cap} a task run may "
            past_cap += "be (STRATA_SCHEDULER_MAX_LOSSES)"
        else:
            times, cap = task.evictions, self.max_evictions
            past_cap = f"evicted {times} times for node memory pressure, more than the {cap} "
            past_cap += "a task run may be (STRATA_SCHEDULER_MAX_EVICTIONS)"
        if times <= cap:
            due = self.now + self.plan.tasks[task.task_id].retry.backoff(times)
            self.move(task, TASK_STATE_RETRY_WAIT, message=message, due_at=due)
            return
        self.move(
            task, TASK_STATE_FAILED, message=f"{past_cap}; last: {message}", finished_at=self.now
        )

    def settle(self, *, stale: bool = False) -> Decision:
        """Release due retries and settle pending tasks, in DAG order, in one pass."""
        for tid in self.plan.order if self.cancel_reason is None else ():
            task = self.tasks[tid]
            if task.state == TASK_STATE_RETRY_WAIT and task.due_at is not None:
                if task.due_at <= self.now:
                    self._request(task)
            elif task.state == TASK_STATE_PENDING:
                self._settle_pending(self.plan.tasks[tid], task)
        state, message = run_state(self.tasks, self.cancel_reason)
        return Decision(
            tasks=tuple(self.tasks[tid] for tid in self.plan.order),
            changes=tuple(self.changes),
            requested=tuple(self.tasks[tid] for tid in self.requested),
            run_state=state,
            message=message,
            stale=stale,
        )

    def _request(self, task: TaskStatus) -> None:
        self.move(
            task,
            TASK_STATE_REQUESTED,
            attempt=task.attempt + 1,
            due_at=None,
            node_id="",
            message="",
            started_at=None,
            limits=None,
            reserved=None,
            peak_usage=None,
        )

    def _settle_pending(self, plan: TaskPlan, task: TaskStatus) -> None:
        upstream = [self.tasks[up] for up in plan.upstream]
        if any(up.state not in TERMINAL for up in upstream):
            return
        any_failed = any(up.state in _FAILED for up in upstream)
        if plan.trigger_rule == TRIGGER_RULE_ALL_DONE:
            runs = True
        elif plan.trigger_rule == TRIGGER_RULE_ANY_FAILED:
            runs = any_failed
        else:
            if any_failed:
                self.move(
                    task,
                    TASK_STATE_UPSTREAM_FAILED,
                    message="an upstream task failed",
                    finished_at=self.now,
                )
                return
            runs = all(up.state == TASK_STATE_SUCCEEDED for up in upstream)
        if not runs:
            self._skip(task, f"trigger rule {_rule_name(plan.trigger_rule)} not met")
            return
        if plan.condition is not None:
            try:
                holds = plan.condition.holds(self.params, self.upstream_outputs(plan))
            except ValueError as error:
                self.move(task, TASK_STATE_FAILED, message=str(error), finished_at=self.now)
                return
            if not holds:
                self._skip(task, f"condition {plan.condition.expression!r} is false")
                return
        self._request(task)

    def _skip(self, task: TaskStatus, message: str) -> None:
        self.move(task, TASK_STATE_SKIPPED, message=message, finished_at=self.now)

    def upstream_outputs(self, plan: TaskPlan) -> dict[str, Json]:
        return upstream_outputs(plan, self.tasks)


def upstream_outputs(plan: TaskPlan, tasks: Mapping[str, TaskStatus]) -> dict[str, Json]:
    """Outputs of the task's upstream tasks, direct or not, that SUCCEEDED, by task id."""
    return {
        tid: dict(tasks[tid].outputs or {})
        for tid in sorted(plan.ancestors)
        if tasks[tid].state == TASK_STATE_SUCCEEDED
    }


def _rule_name(rule: TriggerRule.ValueType) -> str:
    return TriggerRule.Name(rule).removeprefix("TRIGGER_RULE_")
