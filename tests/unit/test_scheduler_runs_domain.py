"""The run state machine: which tasks run, skip or fail, retries and fencing. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.scheduler.domain.plan import RunPlan
from strata.scheduler.domain.runs import (
    Decision,
    Failed,
    Finished,
    Lost,
    Placed,
    Report,
    Started,
    release_due,
    report,
    start,
)

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _task(task_id: str, *deps: str, **fields: object) -> pb.TaskSpec:
    return pb.TaskSpec(task_id=task_id, entrypoint=f"p.m:{task_id}", depends_on=deps, **fields)  # type: ignore[arg-type]


def _plan(*tasks: pb.TaskSpec, **fields: object) -> RunPlan:
    return RunPlan.of(pb.WorkflowSpec(name="wf", tasks=tasks, **fields))  # type: ignore[arg-type]


def _states(decision: Decision) -> dict[str, str]:
    return {
        t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in decision.tasks
    }


def _attempt(decision: Decision, task_id: str) -> int:
    return next(t.attempt for t in decision.tasks if t.task_id == task_id)


class Run:
    """A run driven through the domain functions, as the store would between steps."""

    def __init__(
        self,
        plan: RunPlan,
        params: dict[str, object] | None = None,
        max_evictions: int = 3,
        max_losses: int = 3,
    ) -> None:
        self.plan = plan
        self.params = params or {}
        self.now = T0
        self.max_evictions = max_evictions
        self.max_losses = max_losses
        self.decision = start(plan, self.params, self.now)

    def tell(self, event: Report) -> Decision:
        self.decision = report(
            self.plan,
            self.params,
            self.decision.tasks,
            event,
            self.now,
            max_evictions=self.max_evictions,
            max_losses=self.max_losses,
        )
        return self.decision

    def succeed(self, task_id: str, outputs: dict[str, object] | None = None) -> Decision:
        attempt = _attempt(self.decision, task_id)
        self.tell(Started(task_id, attempt, node_id="n1"))
        return self.tell(Finished(task_id, attempt, outputs=outputs or {}))

    def later(self, seconds: float) -> Decision:
        self.now += timedelta(seconds=seconds)
        self.decision = release_due(self.plan, self.params, self.decision.tasks, self.now)
        return self.decision


def test_a_chain_runs_one_task_after_the_other_and_succeeds() -> None:
    run = Run(_plan(_task("a"), _task("b", "a"), _task("c", "b")))
    assert _states(run.decision) == {"a": "REQUESTED", "b": "PENDING", "c": "PENDING"}
    assert [t.task_id for t in run.decision.requested] == ["a"]
    assert run.decision.run_state == pb.RUN_STATE_RUNNING
    run.tell(Placed("a", 1, node_id="n1"))
    assert _states(run.decision)["a"] == "PLACED"
    run.succeed("a", {"rows": 3})
    assert [t.task_id for t in run.decision.requested] == ["b"]
    run.succeed("b")
    run.succeed("c")
    assert set(_states(run.decision).values()) == {"SUCCEEDED"}
    assert run.decision.run_state == pb.RUN_STATE_SUCCEEDED


def test_two_parallel_branches_are_requested_together_and_joined() -> None:
    run = Run(_plan(_task("a"), _task("b", "a"), _task("c", "a"), _task("d", "b", "c")))
    run.succeed("a")
    assert sorted(t.task_id for t in run.decision.requested) == ["b", "c"]
    run.succeed("b")
    assert _states(run.decision)["d"] == "PENDING"
    run.succeed("c")
    assert [t.task_id for t in run.decision.requested] == ["d"]


def test_a_false_condition_skips_its_branch_and_the_skip_propagates() -> None:
    run = Run(
        _plan(
            _task("compare"),
            _task("deploy", "compare", condition="outputs.compare.better"),
            _task("announce", "deploy"),
            _task("report", "compare", condition="!outputs.compare.better"),
            _task("cleanup", "deploy", "report", trigger_rule=pb.TRIGGER_RULE_ALL_DONE),
        )
    )
    run.succeed("compare", {"better": False})
    states = _states(run.decision)
    assert states["deploy"] == "SKIPPED"
    assert states["announce"] == "SKIPPED"
    assert states["report"] == "REQUESTED"
    assert "is false" in next(t.message for t in run.decision.tasks if t.task_id == "deploy")
    run.succeed("report")
    assert _states(run.decision)["cleanup"] == "REQUESTED"
    run.succeed("cleanup")
    assert run.decision.run_state == pb.RUN_STATE_SUCCEEDED


def test_conditions_read_the_run_params() -> None:
    run = Run(_plan(_task("a", condition="params.mode == 'full'")), {"mode": "quick"})
    assert _states(run.decision) == {"a": "SKIPPED"}
    assert run.decision.run_state == pb.RUN_STATE_SUCCEEDED


def test_a_condition_that_cannot_be_evaluated_fails_the_task_naming_why() -> None:
    run = Run(_plan(_task("a"), _task("b", "a", condition="outputs.a.rows > 0")))
    run.succeed("a", {})
    b = next(t for t in run.decision.tasks if t.task_id == "b")
    assert b.state == pb.TASK_STATE_FAILED
    assert "outputs.a.rows > 0" in b.message
    assert run.decision.run_state == pb.RUN_STATE_FAILED


def _retry(attempts: int, backoff: float, multiplier: float = 2.0) -> pb.RetryPolicy:
    return pb.RetryPolicy(
        max_attempts=attempts,
        initial_backoff=Duration(seconds=int(backoff)),
        backoff_multiplier=multiplier,
    )


def test_a_failed_attempt_waits_its_backoff_then_a_new_attempt_succeeds() -> None:
    run = Run(_plan(_task("a", retry=_retry(3, 10)), _task("b", "a")))
    run.tell(Failed("a", 1, message="ValueError: boom"))
    assert _states(run.decision)["a"] == "RETRY_WAIT"
    assert run.decision.requested == ()
    assert run.later(9).requested == ()
    assert [(t.task_id, t.attempt) for t in run.later(1).requested] == [("a", 2)]
    run.tell(Failed("a", 2, message="ValueError: boom"))
    assert run.later(19).requested == ()
    assert [(t.task_id, t.attempt) for t in run.later(1).requested] == [("a", 3)]
    run.succeed("a")
    run.succeed("b")
    assert run.decision.run_state == pb.RUN_STATE_SUCCEEDED


def test_retries_exhausted_fail_the_task_its_downstream_and_the_run() -> None:
    run = Run(
        _plan(
            _task("a"),
            _task("b", "a"),
            _task("alert", "b", trigger_rule=pb.TRIGGER_RULE_ANY_FAILED),
            default_retry=_retry(2, 0),
        )
    )
    run.tell(Failed("a", 1, message="ValueError: boom"))
    assert [(t.task_id, t.attempt) for t in run.decision.requested] == [("a", 2)]
    run.tell(Failed("a", 2, message="ValueError: boom"))
    states = _states(run.decision)
    assert states["a"] == "FAILED"
    assert states["b"] == "UPSTREAM_FAILED"
    assert states["alert"] == "REQUESTED"
    run.succeed("alert")
    assert run.decision.run_state == pb.RUN_STATE_FAILED
    assert "'a' failed: ValueError: boom" in run.decision.message


def test_an_unschedulable_failure_is_never_retried() -> None:
    run = Run(_plan(_task("a", retry=_retry(5, 0))))
    run.tell(Failed("a", 1, message="no node", retryable=False))
    assert _states(run.decision) == {"a": "FAILED"}


def test_a_lost_attempt_is_retried_and_its_late_result_is_fenced_out() -> None:
    run = Run(_plan(_task("a", retry=_retry(2, 0)), _task("b", "a")))
    run.tell(Started("a", 1, node_id="n1"))
    run.tell(Lost("a", 1, node_id="n1", reason="no heartbeat"))
    assert _attempt(run.decision, "a") == 2
    before = run.decision.tasks
    late = run.tell(Finished("a", 1, node_id="n1", outputs={"rows": 1}))
    assert late.stale
    assert late.changes == ()
    assert late.tasks == before
    assert _states(late)["b"] == "PENDING"
    run.succeed("a")
    assert not run.decision.stale
    assert _states(run.decision)["b"] == "REQUESTED"


def _evicted(task_id: str, attempt: int) -> Failed:
    return Failed(task_id, attempt, message="EVICTED: node memory pressure", evicted=True)


def test_evicted_attempts_are_retried_without_spending_the_tasks_retries() -> None:
    run = Run(_plan(_task("a", retry=_retry(2, 10))))
    run.tell(_evicted("a", 1))
    assert _states(run.decision) == {"a": "RETRY_WAIT"}
    assert run.later(10).requested[0].attempt == 2
    run.tell(_evicted("a", 2))
    assert run.later(19).requested == ()
    assert run.later(1).requested[0].attempt == 3
    # Two evictions spent nothing: the task still has its two attempts of its own.
    run.tell(Failed("a", 3, message="ValueError: boom"))
    assert run.later(10).requested[0].attempt == 4
    run.tell(Failed("a", 4, message="ValueError: boom"))
    assert _states(run.decision) == {"a": "FAILED"}
    assert run.decision.tasks[0].evictions == 2


def test_past_its_cap_on_evictions_a_task_fails_naming_them() -> None:
    run = Run(_plan(_task("a", retry=_retry(5, 0))), max_evictions=2)
    for attempt in (1, 2):
        run.tell(_evicted("a", attempt))
        assert _attempt(run.later(0), "a") == attempt + 1
    run.tell(_evicted("a", 3))
    assert _states(run.decision) == {"a": "FAILED"}
    assert run.decision.message == (
        "task 'a' failed: evicted 3 times for node memory pressure, more than the 2 a task "
        "run may be (STRATA_SCHEDULER_MAX_EVICTIONS); last: EVICTED: node memory pressure"
    )


def test_lost_attempts_are_retried_without_spending_the_tasks_retries() -> None:
    # One attempt allowed: the node's loss is not the task's failure.
    run = Run(_plan(_task("a", retry=_retry(1, 0))))
    run.tell(Started("a", 1, node_id="n1"))
    run.tell(Lost("a", 1, node_id="n1", reason="node n1 stopped answering"))
    assert _attempt(run.later(0), "a") == 2
    run.tell(Failed("a", 2, message="ValueError: boom"))
    assert _states(run.decision) == {"a": "FAILED"}
    assert run.decision.tasks[0].losses == 1
    assert run.decision.message == "task 'a' failed: ValueError: boom"


def test_past_its_cap_on_losses_a_task_fails_naming_them() -> None:
    run = Run(_plan(_task("a", retry=_retry(5, 0))), max_losses=1)
    run.tell(Lost("a", 1, node_id="n1", reason="pod deleted"))
    assert _attempt(run.later(0), "a") == 2
    run.tell(Lost("a", 2, node_id="n2", reason="pod deleted"))
    assert _states(run.decision) == {"a": "FAILED"}
    assert run.decision.message == (
        "task 'a' failed: lost with its node 2 times, more than the 1 a task run may be "
        "(STRATA_SCHEDULER_MAX_LOSSES); last: lost: pod deleted"
    )


def test_a_report_for_a_task_waiting_for_its_retry_is_stale() -> None:
    run = Run(_plan(_task("a", retry=_retry(2, 30))))
    run.tell(Failed("a", 1, message="boom"))
    late = run.tell(Finished("a", 1))
    assert late.stale
    assert _states(late) == {"a": "RETRY_WAIT"}


def test_a_report_naming_an_unknown_task_is_refused() -> None:
    run = Run(_plan(_task("a")))
    with pytest.raises(ValueError, match="'zz' is not a task of workflow 'wf'"):
        run.tell(Finished("zz", 1))


def test_backoff_grows_by_the_multiplier_up_to_the_max() -> None:
    plan = _plan(
        _task(
            "a",
            retry=pb.RetryPolicy(
                max_attempts=5,
                initial_backoff=Duration(seconds=1),
                backoff_multiplier=3,
                max_backoff=Duration(seconds=5),
            ),
        )
    )
    retry = plan.tasks["a"].retry
    assert [retry.backoff(n).total_seconds() for n in (1, 2, 3)] == [1, 3, 5]


def test_every_change_is_listed_with_its_previous_state() -> None:
    run = Run(_plan(_task("a")))
    assert [(c.task_id, c.previous, c.state, c.attempt) for c in run.decision.changes] == [
        ("a", pb.TASK_STATE_PENDING, pb.TASK_STATE_REQUESTED, 1)
    ]
    run.tell(Started("a", 1, node_id="n7"))
    assert [(c.previous, c.state, c.node_id) for c in run.decision.changes] == [
        (pb.TASK_STATE_REQUESTED, pb.TASK_STATE_RUNNING, "n7")
    ]
