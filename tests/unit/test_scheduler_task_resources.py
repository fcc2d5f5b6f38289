"""Who a run's attempts run for, and what each task asked for, was given and used. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources as ResourcesMessage
from strata.api.common.v1.resources_pb2 import ResourceUsage
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.scheduler.domain.plan import RunPlan
from strata.scheduler.domain.resources import Resources, Usage
from strata.scheduler.domain.runs import (
    Decision,
    Failed,
    Finished,
    Placed,
    Report,
    TaskStatus,
    release_due,
    report,
    runs_for,
    start,
)
from strata.scheduler.events import report_of, task_requested
from strata.scheduler.store import StoredRun

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
GIB = 2**30
ASKED = ResourcesMessage(cpu_millis=2000, memory_bytes=4 * GIB)
LIMITS = Resources(2000, 8 * GIB, 0)
RESERVED = Resources(500, 1536 * 2**20, 0)
PEAK = Usage(cpu_millis=800, memory_bytes=1288490188)


def _plan(applied_by: str = "bob") -> RunPlan:
    spec = pb.WorkflowSpec(
        name="wf",
        tasks=[
            pb.TaskSpec(task_id="train", entrypoint="p.m:train", resources=ASKED),
            pb.TaskSpec(task_id="report", entrypoint="p.m:report", depends_on=["train"]),
        ],
        default_resources=ResourcesMessage(cpu_millis=500, memory_bytes=GIB),
        default_retry=pb.RetryPolicy(max_attempts=2, initial_backoff=Duration(seconds=30)),
    )
    return RunPlan.of(spec, applied_by=applied_by)


def _task(decision: Decision, task_id: str) -> TaskStatus:
    return next(t for t in decision.tasks if t.task_id == task_id)


def _tell(plan: RunPlan, decision: Decision, event: Report) -> Decision:
    return report(plan, {}, decision.tasks, event, T0)


def test_each_task_asks_for_its_resources_or_the_workflows_default_from_the_start() -> None:
    decision = start(_plan(), {}, T0)

    assert _task(decision, "train").requested == Resources(2000, 4 * GIB, 0)
    assert _task(decision, "report").requested == Resources(500, GIB, 0)


def test_placement_records_limits_and_reservation_and_the_end_the_peak() -> None:
    plan = _plan()
    decision = _tell(plan, start(plan, {}, T0), Placed("train", 1, "n1", LIMITS, RESERVED))
    placed = _task(decision, "train")
    assert (placed.limits, placed.reserved, placed.peak_usage) == (LIMITS, RESERVED, None)

    decision = _tell(plan, decision, Finished("train", 1, "n1", outputs={}, peak_usage=PEAK))

    done = _task(decision, "train")
    assert (done.limits, done.reserved, done.peak_usage) == (LIMITS, RESERVED, PEAK)
    assert done.requested == Resources(2000, 4 * GIB, 0)


def test_a_retry_forgets_what_the_failed_attempt_was_given_and_used() -> None:
    plan = _plan()
    decision = _tell(plan, start(plan, {}, T0), Placed("train", 1, "n1", LIMITS, RESERVED))
    decision = _tell(plan, decision, Failed("train", 1, "n1", "OUT_OF_MEMORY: killed", True, PEAK))
    waiting = _task(decision, "train")
    assert waiting.state == pb.TASK_STATE_RETRY_WAIT
    assert waiting.peak_usage == PEAK  # the failed attempt's peak shows while it waits

    decision = release_due(plan, {}, decision.tasks, T0 + timedelta(seconds=30))

    retried = _task(decision, "train")
    assert (retried.state, retried.attempt) == (pb.TASK_STATE_REQUESTED, 2)
    assert (retried.limits, retried.reserved, retried.peak_usage) == (None, None, None)
    assert retried.requested == Resources(2000, 4 * GIB, 0)


def test_a_stale_placement_changes_nothing() -> None:
    plan = _plan()
    decision = start(plan, {}, T0)

    after = _tell(plan, decision, Placed("train", 7, "n1", LIMITS, RESERVED))

    assert after.stale
    assert _task(after, "train").limits is None


def test_attempts_run_for_who_started_the_run_else_who_applied_the_version() -> None:
    assert runs_for(pb.RunCause(principal="alice"), "bob") == "alice"
    tick = pb.RunCause(cron_tick=Timestamp(seconds=1))
    assert runs_for(tick, "bob") == "bob"
    assert runs_for(pb.RunCause(), "bob") == "bob"


def test_a_task_request_names_the_user_it_runs_for() -> None:
    plan = _plan(applied_by="bob")
    decision = start(plan, {}, T0)
    by_hand = _run(decision, pb.RunCause(principal="alice"))
    by_cron = _run(decision, pb.RunCause(cron_tick=Timestamp(seconds=1)))
    train = _task(decision, "train")

    assert task_requested(plan, by_hand, train).user == "alice"
    assert task_requested(plan, by_cron, train).user == "bob"


def test_placed_and_ended_events_carry_limits_reserved_and_peak() -> None:
    ref = TaskAttemptRef(run_id="5f0c6c1e-0000-4000-8000-000000000001", task_id="train", attempt=1)
    placed = prov.TaskPlaced(
        attempt=ref,
        node_id="n1",
        limits=ResourcesMessage(cpu_millis=2000, memory_bytes=8 * GIB),
        reserved=ResourcesMessage(cpu_millis=500, memory_bytes=1536 * 2**20),
    )
    peak = ResourceUsage(cpu_millis=800, memory_bytes=1288490188)

    assert report_of(placed)[1] == Placed("train", 1, "n1", LIMITS, RESERVED)
    assert report_of(prov.TaskPlaced(attempt=ref))[1] == Placed("train", 1, "", None, None)
    finished = report_of(prov.TaskFinished(attempt=ref, peak_usage=peak))[1]
    assert isinstance(finished, Finished)
    assert finished.peak_usage == PEAK
    failed = report_of(prov.TaskFailed(attempt=ref, kind=prov.FAILURE_KIND_UNSCHEDULABLE))[1]
    assert isinstance(failed, Failed)
    assert failed.peak_usage is None


def _run(decision: Decision, cause: pb.RunCause) -> StoredRun:
    return StoredRun(
        run_id="5f0c6c1e-0000-4000-8000-000000000001",
        workflow_name="wf",
        workflow_version=1,
        state=decision.run_state,
        cause=cause,
        params={},
        message="",
        created_at=T0,
        started_at=T0,
        finished_at=None,
        tasks=decision.tasks,
    )
