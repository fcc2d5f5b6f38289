"""Cancelling a run and queueing one, in the run state machine. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.scheduler.domain.plan import RunPlan
from strata.scheduler.domain.runs import (
    Decision,
    Failed,
    Finished,
    Lost,
    Report,
    Started,
    cancel,
    queued,
    report,
    start,
)

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
REASON = "cancelled by alice"


def _plan() -> RunPlan:
    retry = pb.RetryPolicy(max_attempts=3, initial_backoff=Duration(seconds=1))
    return RunPlan.of(
        pb.WorkflowSpec(
            name="wf",
            tasks=[
                pb.TaskSpec(task_id="a", entrypoint="p.m:a", retry=retry),
                pb.TaskSpec(task_id="b", entrypoint="p.m:b", retry=retry),
                pb.TaskSpec(task_id="c", entrypoint="p.m:c", depends_on=["a", "b"]),
            ],
        )
    )


def _states(decision: Decision) -> dict[str, str]:
    return {
        t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in decision.tasks
    }


def _tell(plan: RunPlan, decision: Decision, event: Report, cancelling: bool = False) -> Decision:
    reason = REASON if cancelling else None
    return report(plan, {}, decision.tasks, event, T0, cancel_reason=reason)


def test_a_queued_run_has_every_task_pending_and_requests_nothing() -> None:
    decision = queued(_plan())
    assert decision.run_state == pb.RUN_STATE_QUEUED
    assert set(_states(decision).values()) == {"PENDING"}
    assert decision.requested == ()
    assert decision.changes == ()


def test_cancelling_a_queued_run_cancels_it_at_once() -> None:
    plan = _plan()
    decision = cancel(plan, {}, queued(plan).tasks, REASON, T0)
    assert decision.run_state == pb.RUN_STATE_CANCELLED
    assert set(_states(decision).values()) == {"CANCELLED"}
    assert decision.to_stop == ()


def test_cancel_stops_running_attempts_and_cancels_the_rest() -> None:
    plan = _plan()
    running = start(plan, {}, T0)
    running = _tell(plan, running, Started("a", 1, "node-1"))
    running = _tell(plan, running, Failed("b", 1, "node-1", message="boom"))
    assert _states(running) == {"a": "RUNNING", "b": "RETRY_WAIT", "c": "PENDING"}

    cancelling = cancel(plan, {}, running.tasks, REASON, T0)
    assert cancelling.run_state == pb.RUN_STATE_CANCELLING
    assert cancelling.message == REASON
    assert _states(cancelling) == {"a": "RUNNING", "b": "CANCELLED", "c": "CANCELLED"}
    assert [(t.task_id, t.attempt) for t in cancelling.to_stop] == [("a", 1)]
    assert cancelling.requested == ()


def test_a_stopped_attempt_ends_the_cancelled_run_and_is_never_retried() -> None:
    plan = _plan()
    running = _tell(plan, start(plan, {}, T0), Started("a", 1, "node-1"))
    cancelling = cancel(plan, {}, running.tasks, REASON, T0)
    assert [t.task_id for t in cancelling.to_stop] == ["a", "b"]  # b was requested
    for stopped in (Failed("a", 1, message="CANCELLED: stopped"), Lost("a", 1, reason="gone")):
        one = _tell(plan, cancelling, stopped, cancelling=True)
        assert one.run_state == pb.RUN_STATE_CANCELLING
        assert _states(one) == {"a": "CANCELLED", "b": "REQUESTED", "c": "CANCELLED"}
        assert one.requested == ()
        done = _tell(plan, one, Failed("b", 1, message="CANCELLED: stopped"), cancelling=True)
        assert done.run_state == pb.RUN_STATE_CANCELLED
        assert _states(done) == {"a": "CANCELLED", "b": "CANCELLED", "c": "CANCELLED"}
        assert done.requested == ()


def test_an_attempt_that_finishes_while_cancelling_keeps_its_success_and_starts_nothing() -> None:
    plan = _plan()
    running = start(plan, {}, T0)
    running = _tell(plan, running, Started("a", 1))
    running = _tell(plan, running, Started("b", 1))
    cancelling = cancel(plan, {}, running.tasks, REASON, T0)
    one = _tell(plan, cancelling, Finished("a", 1, outputs={"x": 1}), cancelling=True)
    assert one.run_state == pb.RUN_STATE_CANCELLING
    both = _tell(plan, one, Finished("b", 1), cancelling=True)
    assert both.run_state == pb.RUN_STATE_CANCELLED
    assert _states(both) == {"a": "SUCCEEDED", "b": "SUCCEEDED", "c": "CANCELLED"}
    assert both.requested == ()
