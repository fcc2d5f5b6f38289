"""``strata workflow apply|list|run|status|cancel|backfill``: the scheduler's workflow
and run calls, printed for people.

Each failure becomes one line naming what to fix (the file and field, the workflow
and field the scheduler refused, an unknown workflow or run, or the scheduler's
address), never a traceback. ``run --follow`` and ``status`` show each task's state,
node, attempt and duration (``status`` also what each asked for, got reserved and
used); ``--follow`` reads WatchRun, redrawing one table on a terminal and printing
one line per change otherwise (a CI log, a pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.live import Live
from rich.table import Table

from strata.api.common.v1.refs_pb2 import BundleRef
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.blobs import open_blob_store
from strata.core.errors import StrataError
from strata.core.rpc.status import field_violations
from strata.core.settings import BlobSettings, load
from strata.sdk.client import CommandError, service_channel
from strata.sdk.workflows import bundle
from strata.sdk.workflows.loading import load_workflows
from strata.sdk.workflows.usage import usage_table

SCHEDULER = "strata.scheduler.v1.SchedulerService"
T = TypeVar("T")


async def apply(path: Path, *, paused: bool, validate_only: bool, out: Console) -> None:
    """Apply every workflow ``path`` declares, with the bundle of the file's folder (stored
    in the blob store unless it is there already, never with ``--validate-only``); one
    line per workflow with its version (a changed bundle is a changed workflow)."""
    try:
        specs = [workflow.to_spec() for workflow in load_workflows(path)]
    except StrataError as error:
        raise CommandError(f"{path}: {error}") from None
    ref = await _bundle(path.parent, validate_only=validate_only)
    for spec in specs:
        spec.bundle.CopyFrom(ref)
    async with _channel() as chan:
        stub = SchedulerServiceStub(chan)
        for spec in specs:
            request = pb.ApplyWorkflowRequest(spec=spec, paused=paused, validate_only=validate_only)
            reply: pb.ApplyWorkflowResponse = await _call(
                stub.ApplyWorkflow(request), f"workflow {spec.name!r}"
            )
            what = "changed" if reply.changed else "unchanged"
            verb = "would be" if validate_only else "is"
            out.print(f"{spec.name}: {verb} version {reply.workflow.version} ({what})")


async def _bundle(project: Path, *, validate_only: bool) -> BundleRef:
    """The bundle of ``project``, stored through the user's ``STRATA_BLOB_*`` settings."""
    try:
        packed = await asyncio.to_thread(bundle.pack, project)
    except OSError as error:
        raise CommandError(f"bundle of {project}: {error}") from None
    try:
        settings = load(BlobSettings)
        if validate_only:
            return bundle.reference(packed, settings)
        async with open_blob_store(settings) as blobs:
            ref = await bundle.store(packed, blobs, settings)
    except (StrataError, OSError) as error:
        raise CommandError(f"bundle of {project}: the blob store: {error}") from None
    return ref


async def list_workflows(out: Console) -> None:
    """A table of every workflow's current version."""
    table = Table("name", "version", "tasks", "triggers", "paused", "applied", "by")
    token = ""
    async with _channel() as chan:
        stub = SchedulerServiceStub(chan)
        while True:
            request = pb.ListWorkflowsRequest(page_token=token)
            page: pb.ListWorkflowsResponse = await _call(stub.ListWorkflows(request), "list")
            for w in page.workflows:
                table.add_row(
                    w.spec.name,
                    str(w.version),
                    str(len(w.spec.tasks)),
                    ", ".join(_trigger(t) for t in w.spec.triggers) or "-",
                    "yes" if w.paused else "no",
                    w.applied_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"),
                    w.applied_by,
                )
            token = page.next_page_token
            if not token:
                break
    out.print(table)


async def run(name: str, params: Sequence[str], *, follow: bool, out: Console) -> None:
    """Start a run of ``name``; with ``follow``, show it live until it ends.

    A followed run that ends other than SUCCEEDED is a CommandError (exit 1) saying
    how it ended.
    """
    request = pb.TriggerRunRequest(
        workflow_name=name, params=_params(params), request_id=str(uuid.uuid4())
    )
    async with _channel() as chan:
        stub = SchedulerServiceStub(chan)
        reply: pb.TriggerRunResponse = await _call(
            stub.TriggerRun(request), f"workflow {name!r}", not_found=_not_applied(name)
        )
        if not follow:
            out.print(_heading(reply.run))
            return
        final = await _follow(stub, reply.run.run_id, out)
    if final.state != pb.RUN_STATE_SUCCEEDED:
        raise CommandError(_ending(final))
    out.print(_ending(final))


async def status(run_id: str, out: Console) -> None:
    """The run and a table of its tasks: state, attempt, node, duration and why; then
    what each asked for, what its latest attempt got reserved and what it used.

    Why a requested attempt is not placed yet is the provisioner's to say (its
    queue); when it cannot be asked, the status says so and shows the rest.
    """
    async with _channel() as chan:
        stub = SchedulerServiceStub(chan)
        reply: pb.GetRunResponse = await _call(
            stub.GetRun(pb.GetRunRequest(run_id=run_id)), f"run {run_id!r}"
        )
        found = reply.run
        waiting = [t for t in found.tasks if t.state == pb.TASK_STATE_REQUESTED]
        queue = ""
        if waiting:
            workflow: pb.GetWorkflowResponse = await _call(
                stub.GetWorkflow(
                    pb.GetWorkflowRequest(name=found.workflow_name, version=found.workflow_version)
                ),
                f"workflow {found.workflow_name!r}",
            )
            queue = workflow.workflow.spec.queue
    waits = await _placement_waits(found.run_id, queue, out) if waiting else {}
    out.print(_heading(found))
    out.print(f"cause: {_cause(found.cause)}; created {_time(found.created_at)}")
    if found.state == pb.RUN_STATE_QUEUED:
        out.print("waiting: the workflow's max_active_runs (or its backfill's limit) is reached")
    if found.message:
        out.print(f"message: {found.message}")
    rows = [_Row.of(t) for t in found.tasks]
    rows = [replace(r, message=waits.get((r.task_id, r.attempt), r.message)) for r in rows]
    out.print(_tasks_table(rows, datetime.now(UTC)))
    usage = usage_table(found.tasks)
    if usage is not None:
        out.print(usage)


async def _placement_waits(run_id: str, queue: str, out: Console) -> dict[tuple[str, int], str]:
    """Why each waiting attempt of the run is not placed, by (task id, attempt)."""
    try:
        async with _channel("provisioner") as chan:
            reply: prov.GetQueueResponse = await _call(
                ProvisionerServiceStub(chan).GetQueue(prov.GetQueueRequest(name=queue)),
                f"queue {queue or 'default'!r}",
                service="provisioner",
            )
    except CommandError as error:
        out.print(f"why tasks wait for a node is unknown: {error}")
        return {}
    return {
        (p.attempt.task_id, p.attempt.attempt): f"waiting for a node: {p.waiting_for}"
        for p in reply.queue.pending
        if p.attempt.run_id == run_id and p.waiting_for
    }


async def cancel(run_id: str, reason: str, out: Console) -> None:
    """Cancel a run; says whether attempts are still being stopped."""
    async with _channel() as chan:
        reply: pb.CancelRunResponse = await _call(
            SchedulerServiceStub(chan).CancelRun(pb.CancelRunRequest(run_id=run_id, reason=reason)),
            f"run {run_id!r}",
        )
    found = reply.run
    stopping = [t.task_id for t in found.tasks if t.state in _ACTIVE]
    line = f"run {found.run_id}: {_run_state(found.state)}"
    if found.state == pb.RUN_STATE_CANCELLING:
        line += f" (stopping {', '.join(stopping)})"
    out.print(line)


async def backfill(
    name: str, start: str, end: str, *, max_concurrent: int, dataset: str, out: Console
) -> None:
    """One run per cron tick of ``name`` from ``start`` to ``end`` (or, with ``dataset``,
    per partition of it that arrived then); a table of them."""
    request = pb.BackfillWorkflowRequest(
        workflow_name=name,
        from_time=_timestamp(start, "--from"),
        to_time=_timestamp(end, "--to"),
        max_concurrent=max_concurrent,
        dataset=dataset,
    )
    async with _channel() as chan:
        reply: pb.BackfillWorkflowResponse = await _call(
            SchedulerServiceStub(chan).BackfillWorkflow(request),
            f"backfill of {name!r}",
            not_found=_not_applied(name),
        )
    limit = f"at most {max_concurrent} at once" if max_concurrent else "the workflow's limit"
    what = "partitions" if dataset else "ticks"
    out.print(f"{name}: {len(reply.runs)} {what}, {reply.created} new runs, {limit}")
    table = Table("partition" if dataset else "tick", "run", "state")
    for r in reply.runs:
        done_for = r.cause.data_arrival.partition if dataset else _time(r.cause.cron_tick)
        table.add_row(done_for, r.run_id, _run_state(r.state))
    out.print(table)


_ACTIVE = frozenset({pb.TASK_STATE_REQUESTED, pb.TASK_STATE_PLACED, pb.TASK_STATE_RUNNING})
_TERMINAL_RUN = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})


@dataclass(frozen=True)
class _Row:
    """One task as ``--follow`` and ``status`` show it."""

    task_id: str
    state: pb.TaskState.ValueType
    attempt: int
    node_id: str
    started_at: datetime | None
    finished_at: datetime | None
    message: str
    evictions: int = 0
    """Attempts evicted for node memory pressure (they spent no retry)."""
    losses: int = 0
    """Attempts lost with their node (they spent no retry)."""

    @classmethod
    def of(cls, task: pb.TaskInstance) -> _Row:
        return cls(
            task_id=task.task_id,
            state=task.state,
            attempt=task.attempt,
            node_id=task.node_id,
            started_at=_moment(task, "started_at"),
            finished_at=_moment(task, "finished_at"),
            message=task.message,
            evictions=task.evictions,
            losses=task.losses,
        )

    def moved(self, change: pb.TaskStateChanged, at: datetime) -> _Row:
        """The row after ``change``, which happened ``at``."""
        moved = replace(
            self,
            state=change.state,
            attempt=change.attempt.attempt,
            node_id=change.node_id or self.node_id,
            message=change.message,
        )
        if change.state == pb.TASK_STATE_RUNNING:
            return replace(moved, started_at=at, finished_at=None)
        if change.state == pb.TASK_STATE_REQUESTED:
            return replace(moved, started_at=None, finished_at=None)
        if change.state not in _ACTIVE and change.state != pb.TASK_STATE_RETRY_WAIT:
            return replace(moved, finished_at=at)
        return moved

    def duration(self, now: datetime) -> str:
        if self.started_at is None:
            return "-"
        seconds = ((self.finished_at or now) - self.started_at).total_seconds()
        return f"{seconds:.1f}s"


async def _follow(stub: SchedulerServiceStub, run_id: str, out: Console) -> pb.Run:
    """Show the run's tasks until the run ends; the run as it ended.

    The heading is printed once the snapshot is in: every change after it shows.
    """
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id))
    first = await _call(call.read(), f"run {run_id!r}")
    if not isinstance(first, pb.WatchRunResponse):
        raise CommandError(f"run {run_id!r}: the scheduler ended the watch before its snapshot")
    final = first.snapshot
    out.print(_heading(final))
    rows = {t.task_id: _Row.of(t) for t in final.tasks}

    def table() -> Table:
        return _tasks_table(list(rows.values()), datetime.now(UTC))

    # Redrawn twice a second, so a running task's duration counts up between changes.
    live = Live(get_renderable=table, console=out, refresh_per_second=2)
    with live if out.is_terminal else contextlib.nullcontext():
        while final.state not in _TERMINAL_RUN:
            message = await _call(call.read(), f"run {run_id!r}")
            if not isinstance(message, pb.WatchRunResponse):  # the stream ended
                break
            at = message.occurred_at.ToDatetime(tzinfo=UTC)
            if message.WhichOneof("change") == "task_state_changed":
                change = message.task_state_changed
                row = rows[change.attempt.task_id].moved(change, at)
                rows[row.task_id] = row
                if not out.is_terminal:
                    out.print(_line(row, at))
            else:
                final.state = message.run_state_changed.state
                final.message = message.run_state_changed.message
            if out.is_terminal:
                live.refresh()
    if not out.is_terminal:
        out.print(table())
    return final


def _line(row: _Row, at: datetime) -> str:
    where = f" on {row.node_id}" if row.node_id else ""
    why = f": {row.message}" if row.message else ""
    return (
        f"{at:%H:%M:%S} {row.task_id} {_task_state(row.state)}{where} (attempt {row.attempt}){why}"
    )


def _tasks_table(rows: Sequence[_Row], now: datetime) -> Table:
    table = Table("task", "state", "attempt", "node", "duration", "why")
    for row in rows:
        table.add_row(
            row.task_id,
            _task_state(row.state),
            _attempt(row),
            row.node_id or "-",
            row.duration(now),
            row.message,
        )
    return table


def _attempt(row: _Row) -> str:
    """The attempt number, and how many attempts were evicted or lost (they spent no
    retry)."""
    spared = [
        f"{count} {what}"
        for count, what in ((row.evictions, "evicted"), (row.losses, "lost"))
        if count
    ]
    return f"{row.attempt} ({', '.join(spared)})" if spared else str(row.attempt)


def _heading(run: pb.Run) -> str:
    return (
        f"run {run.run_id} of {run.workflow_name} version {run.workflow_version}: "
        f"{_run_state(run.state)}"
    )


def _ending(final: pb.Run) -> str:
    why = f": {final.message}" if final.message else ""
    return f"run {final.run_id} {_run_state(final.state)}{why}"


def _params(pairs: Sequence[str]) -> Struct:
    """``key=value`` pairs as run parameters; a value that is JSON (3, true, [1]) is read
    as such, anything else is a string."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--param {pair!r}: expected key=value, e.g. --param epochs=3")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return json_format.ParseDict(values, Struct())


def _timestamp(text: str, option: str) -> Timestamp:
    """An ISO 8601 time (UTC when it has no offset) as a Timestamp."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{option} {text!r}: expected an ISO 8601 time, e.g. 2026-01-01 or 2026-01-01T03:00"
        ) from None
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def _moment(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _time(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cause(cause: pb.RunCause) -> str:
    kind = cause.WhichOneof("kind")
    if kind == "cron_tick":
        return f"cron tick {_time(cause.cron_tick)}"
    if kind == "data_arrival":
        return f"data {cause.data_arrival.dataset} {cause.data_arrival.partition}"
    return f"triggered by {cause.principal}"


def _run_state(state: pb.RunState.ValueType) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def _task_state(state: pb.TaskState.ValueType) -> str:
    return pb.TaskState.Name(state).removeprefix("TASK_STATE_")


def _not_applied(name: str) -> str:
    return (
        f"workflow {name!r} is not applied: `strata workflow apply FILE` with a file declaring it"
    )


def _trigger(trigger: pb.Trigger) -> str:
    if trigger.WhichOneof("kind") == "cron":
        return f"cron {trigger.cron.expression} {trigger.cron.time_zone or 'UTC'}"
    glob = trigger.data_arrival.partition_glob
    return f"data {trigger.data_arrival.dataset}" + (f" {glob}" if glob else "")


_IDEMPOTENT = {
    "scheduler": (
        f"{SCHEDULER}/GetWorkflow",
        f"{SCHEDULER}/ListWorkflows",
        f"{SCHEDULER}/GetRun",
        f"{SCHEDULER}/TriggerRun",  # with its request id
        f"{SCHEDULER}/CancelRun",
        f"{SCHEDULER}/BackfillWorkflow",  # one run per tick, however often asked
    ),
    "provisioner": ("strata.provisioner.v1.ProvisionerService/GetQueue",),
}


def _channel(service: str = "scheduler") -> grpc.aio.Channel:
    return service_channel(service, idempotent=_IDEMPOTENT[service])


async def _call(
    call: Awaitable[T], what: str, not_found: str = "", service: str = "scheduler"
) -> T:
    """The reply of ``call``, or a CommandError saying in one line what went wrong."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise CommandError(not_found or f"{what}: not found") from None
        violations = field_violations(error)
        if violations:
            fields = "; ".join(f"{field}: {problem}" for field, problem in violations.items())
            raise CommandError(f"{what} refused: {fields}") from None
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"the {service} is not reachable: {error.details()}") from None
        raise CommandError(f"{what}: {error.code().name}: {error.details()}") from None
