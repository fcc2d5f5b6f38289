"""A burst of task events on a real ``python -m strata.scheduler``.

The scheduler applies ``strata.tasks.events`` in batches, one transaction per
batch. The test plays the provisioner and the agents as test_scheduler_runs.py
does, but answers every run's requested tasks at once, so batches hold the
events of several runs. What a team relies on: every run still ends in the
right state, each task is requested exactly once with its upstream outputs (the
events of one run applied in their order), and a report naming a task the
workflow lacks, arriving amid the others, is dead-lettered alone while the rest
of its batch is applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from scheduler_peer import DEV, Cluster
from scheduler_peer import apply_and_trigger as _apply_and_trigger
from scheduler_peer import name as _name
from scheduler_peer import run_until as _run_until
from scheduler_peer import states as _states
from scheduler_peer import task as _task
from test_scheduler_triggers import _dead_letter

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.topics import TASKS_EVENTS, dead_letter_topic

pytestmark = pytest.mark.integration

RUNS = 6
ROUNDS = (("prepare",), ("train-a", "train-b"), ("publish",))
"""The tasks each run requests, round by round: a fan-out and a join."""


async def test_a_burst_of_task_events_for_many_runs_ends_every_run_right(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    spec = pb.WorkflowSpec(
        name=_name("burst"),
        tasks=[
            _task("prepare"),
            _task("train-a", "prepare"),
            _task("train-b", "prepare"),
            _task("publish", "train-a", "train-b"),
        ],
    )
    run_ids = [(await _apply_and_trigger(client, spec)).run_id]
    for _ in range(RUNS - 1):
        reply = await client.TriggerRun(pb.TriggerRunRequest(workflow_name=spec.name), metadata=DEV)
        run_ids.append(reply.run.run_id)

    heard: list[pb.TaskRequested] = []
    poison = None
    for number, tasks in enumerate(ROUNDS):
        requests = [await cluster.next_request(r) for r in run_ids for _ in tasks]
        heard += requests
        assert sorted(r.attempt.task_id for r in requests) == sorted(tasks * RUNS)
        refs = [r.attempt for r in requests]
        await _all(refs, lambda ref: cluster.bus.publish(_placed(ref)))
        await _all(refs, lambda ref: cluster.bus.publish(_started(ref)))
        if number == 1:
            unknown = TaskAttemptRef(run_id=run_ids[0], task_id="no-such-task", attempt=1)
            poison = await cluster.bus.publish(_finished(unknown))
        await _all(refs, lambda ref: cluster.bus.publish(_finished(ref)))

    for run_id in run_ids:
        done = await _run_until(client, run_id, pb.RUN_STATE_SUCCEEDED)
        assert set(_states(done).values()) == {"SUCCEEDED"}
    requested = sorted((r.attempt.run_id, r.attempt.task_id, r.attempt.attempt) for r in heard)
    every_task = [t for tasks in ROUNDS for t in tasks]
    assert requested == sorted((r, t, 1) for r in run_ids for t in every_task)
    assert all(cluster.pending(r) == 0 for r in run_ids)
    for request in heard:
        if request.attempt.task_id == "publish":
            upstream = {
                k: json_format.MessageToDict(v) for k, v in request.upstream_outputs.items()
            }
            assert upstream == {
                t: _outputs_of(request.attempt.run_id, t) for t in ("prepare", "train-a", "train-b")
            }

    assert poison is not None
    letter = await _dead_letter(dead_letter_topic(TASKS_EVENTS.name), poison.event_id)
    assert letter.cause == DeadLetter.CAUSE_REJECTED
    assert "attempt.task_id" in letter.reason
    assert "no-such-task" in letter.reason


async def _all(
    refs: list[TaskAttemptRef], publish: Callable[[TaskAttemptRef], Awaitable[Any]]
) -> None:
    """Publish one event per attempt, all at once (each attempt's events stay in order:
    the next kind is published only once every event of this kind is acknowledged)."""
    await asyncio.gather(*(publish(ref) for ref in refs))


def _outputs_of(run_id: str, task_id: str) -> dict[str, Any]:
    return {"run": run_id, "task": task_id}


def _placed(ref: TaskAttemptRef) -> prov.TaskPlaced:
    return prov.TaskPlaced(attempt=ref, node_id="node-1")


def _started(ref: TaskAttemptRef) -> prov.TaskStarted:
    return prov.TaskStarted(attempt=ref, node_id="node-1")


def _finished(ref: TaskAttemptRef) -> prov.TaskFinished:
    outputs = json_format.ParseDict(_outputs_of(ref.run_id, ref.task_id), Struct())
    return prov.TaskFinished(attempt=ref, node_id="node-1", outputs=outputs)
