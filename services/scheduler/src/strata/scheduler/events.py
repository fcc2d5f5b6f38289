"""Events in and out of the scheduler, converted to and from the run domain.

In: what the provisioner and the agents report on ``strata.tasks.events``
(placed, started, finished, failed, lost), as domain reports. Out: what the
scheduler announces (TaskRequested and TaskCancelRequested on
``strata.tasks.requested``; RunStateChanged and TaskStateChanged on
``strata.runs.events``), built from a run and a decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources as ResourcesMessage
from strata.api.common.v1.resources_pb2 import ResourceUsage
from strata.api.provisioner.v1.provisioner_pb2 import (
    FAILURE_KIND_CANCELLED,
    FAILURE_KIND_EVICTED,
    FAILURE_KIND_UNSCHEDULABLE,
    FailureKind,
    TaskFailed,
    TaskFinished,
    TaskLost,
    TaskPlaced,
    TaskStarted,
)
from strata.api.scheduler.v1.scheduler_pb2 import (
    RunState,
    RunStateChanged,
    TaskCancelRequested,
    TaskRequested,
    TaskStateChanged,
)
from strata.scheduler.domain.plan import RunPlan
from strata.scheduler.domain.resources import Resources, Usage
from strata.scheduler.domain.runs import (
    Failed,
    Finished,
    Lost,
    Placed,
    Report,
    Started,
    TaskChange,
    TaskStatus,
    runs_for,
    upstream_outputs,
)
from strata.scheduler.store import StoredRun

REPORTS: tuple[type[Message], ...] = (TaskPlaced, TaskStarted, TaskFinished, TaskFailed, TaskLost)
"""The events of ``strata.tasks.events`` that move a run."""

_NOT_RETRYABLE = frozenset({FAILURE_KIND_UNSCHEDULABLE, FAILURE_KIND_CANCELLED})


def report_of(event: Message) -> tuple[str, Report]:
    """The run id and the domain report of one of the :data:`REPORTS` events."""
    if isinstance(event, TaskPlaced):
        return event.attempt.run_id, Placed(
            **_base(event.attempt, event.node_id),
            limits=_resources(event, "limits"),
            reserved=_resources(event, "reserved"),
        )
    if isinstance(event, TaskStarted):
        return event.attempt.run_id, Started(**_base(event.attempt, event.node_id))
    if isinstance(event, TaskFinished):
        outputs = json_format.MessageToDict(event.outputs)
        return event.attempt.run_id, Finished(
            **_base(event.attempt, event.node_id),
            outputs=outputs,
            peak_usage=_usage(event),
        )
    if isinstance(event, TaskFailed):
        kind = FailureKind.Name(event.kind).removeprefix("FAILURE_KIND_")
        return event.attempt.run_id, Failed(
            **_base(event.attempt, event.node_id),
            message=f"{kind}: {event.message}",
            retryable=event.kind not in _NOT_RETRYABLE,
            peak_usage=_usage(event),
            evicted=event.kind == FAILURE_KIND_EVICTED,
        )
    if isinstance(event, TaskLost):
        return event.attempt.run_id, Lost(
            **_base(event.attempt, event.node_id), reason=event.reason
        )
    raise TypeError(f"{type(event).__name__} is not a task report")


def _base(ref: TaskAttemptRef, node_id: str) -> dict[str, Any]:
    return {"task_id": ref.task_id, "attempt": ref.attempt, "node_id": node_id}


def _resources(event: Message, field: str) -> Resources | None:
    """The event's ``field`` (a Resources), None when the event leaves it unset."""
    if not event.HasField(field):
        return None
    amounts: ResourcesMessage = getattr(event, field)
    return Resources(amounts.cpu_millis, amounts.memory_bytes, amounts.gpus)


def _usage(event: TaskFinished | TaskFailed) -> Usage | None:
    """The event's peak usage, None when it carries none (an attempt that never ran)."""
    if not event.HasField("peak_usage"):
        return None
    peak = event.peak_usage
    return Usage(peak.cpu_millis, peak.memory_bytes, peak.gpu_percent, peak.gpu_memory_bytes)


def resources_message(amounts: Resources | None) -> ResourcesMessage | None:
    """``amounts`` as the proto; None stays unset."""
    if amounts is None:
        return None
    return ResourcesMessage(
        cpu_millis=amounts.cpu_millis, memory_bytes=amounts.memory_bytes, gpus=amounts.gpus
    )


def usage_message(usage: Usage | None) -> ResourceUsage | None:
    """``usage`` as the proto; None stays unset."""
    if usage is None:
        return None
    return ResourceUsage(
        cpu_millis=usage.cpu_millis,
        memory_bytes=usage.memory_bytes,
        gpu_percent=usage.gpu_percent,
        gpu_memory_bytes=usage.gpu_memory_bytes,
    )


def task_requested(plan: RunPlan, run: StoredRun, task: TaskStatus) -> TaskRequested:
    """The request of ``task``'s current attempt, with its arguments and upstream outputs."""
    workflow = plan.workflow
    spec = plan.tasks[task.task_id].spec
    by_id = {t.task_id: t for t in run.tasks}
    args = {**run.params, **json_format.MessageToDict(spec.args)}
    request = TaskRequested(
        attempt=_ref(run.run_id, task.task_id, task.attempt),
        workflow_name=workflow.name,
        entrypoint=spec.entrypoint,
        bundle=workflow.bundle,
        args=_struct(args),
        upstream_outputs={
            tid: _struct(outputs)
            for tid, outputs in upstream_outputs(plan.tasks[task.task_id], by_id).items()
        },
        resources=spec.resources if spec.HasField("resources") else workflow.default_resources,
        priority=workflow.priority,
        queue=workflow.queue or "default",
        user=runs_for(run.cause, plan.applied_by),
    )
    if spec.HasField("timeout"):
        request.timeout.CopyFrom(spec.timeout)
    return request


def task_cancel_requested(run_id: str, task: TaskStatus, reason: str) -> TaskCancelRequested:
    """Ask the provisioner to stop ``task``'s current attempt."""
    return TaskCancelRequested(attempt=_ref(run_id, task.task_id, task.attempt), reason=reason)


def task_state_changed(run_id: str, change: TaskChange) -> TaskStateChanged:
    return TaskStateChanged(
        attempt=_ref(run_id, change.task_id, change.attempt),
        previous_state=change.previous,
        state=change.state,
        node_id=change.node_id,
        message=change.message,
    )


def run_state_changed(run: StoredRun, previous: RunState.ValueType) -> RunStateChanged:
    return RunStateChanged(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        previous_state=previous,
        state=run.state,
        message=run.message,
    )


def _ref(run_id: str, task_id: str, attempt: int) -> TaskAttemptRef:
    return TaskAttemptRef(run_id=run_id, task_id=task_id, attempt=attempt)


def _struct(values: Mapping[str, Any]) -> Struct:
    return json_format.ParseDict(dict(values), Struct())
