"""Who an attempt runs for, and what each task asked for, was given and used, on a real
``python -m strata.scheduler`` over the real Kafka and Postgres.

The test plays the provisioner and the agents (as in test_scheduler_runs.py). What a
team relies on: a run started by hand runs its attempts for whoever started it, a run
started by a trigger for whoever applied the workflow (the queue's per-user cap
counts by it); GetRun shows each task's request, and for its latest attempt the
limits and reservation the provisioner placed it with and its peak usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from scheduler_peer import BOUND, Cluster
from scheduler_peer import name as _name
from scheduler_peer import run_until as _run_until
from scheduler_peer import task as _task

from strata.api.common.v1.resources_pb2 import Resources, ResourceUsage
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub

pytestmark = pytest.mark.integration

GIB = 2**30
TOKENS = {
    "alice-token": {"principal": "alice", "roles": ["developer"]},
    "bob-token": {"principal": "bob", "roles": ["developer"]},
    # run_until (scheduler_peer) reads runs with the peers' developer token.
    "dev-token": {"principal": "dev", "roles": ["developer"]},
}
ALICE = (("authorization", "Bearer alice-token"),)
BOB = (("authorization", "Bearer bob-token"),)
ASKED = Resources(cpu_millis=2000, memory_bytes=4 * GIB)


@pytest.fixture(scope="module")
def scheduler_tokens() -> Mapping[str, Mapping[str, object]]:
    """Alice's and Bob's tokens beside the peers' (the module's scheduler takes them)."""
    return TOKENS


def _spec(name: str) -> pb.WorkflowSpec:
    return pb.WorkflowSpec(
        name=name,
        tasks=[_task("train", resources=ASKED)],
        triggers=[pb.Trigger(cron=pb.CronTrigger(expression="0 0 1 1 *"))],
        queue="research",
    )


async def test_a_run_started_by_hand_runs_for_its_starter_and_shows_asked_given_and_used(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    spec = _spec(_name("sized"))
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=BOB)
    reply = await client.TriggerRun(pb.TriggerRunRequest(workflow_name=spec.name), metadata=ALICE)
    run_id = reply.run.run_id
    assert reply.run.tasks[0].requested == ASKED

    request = await cluster.next_request(run_id)
    assert (request.user, request.queue, request.resources) == ("alice", "research", ASKED)
    limits = Resources(cpu_millis=2000, memory_bytes=4 * GIB)
    reserved = Resources(cpu_millis=500, memory_bytes=GIB + GIB // 2)
    peak = ResourceUsage(cpu_millis=800, memory_bytes=GIB + GIB // 4, gpu_percent=0.0)
    await cluster.bus.publish(
        prov.TaskPlaced(attempt=request.attempt, node_id="node-1", limits=limits, reserved=reserved)
    )
    await cluster.bus.publish(prov.TaskStarted(attempt=request.attempt, node_id="node-1"))
    await cluster.bus.publish(
        prov.TaskFinished(attempt=request.attempt, node_id="node-1", peak_usage=peak)
    )

    done = await _run_until(client, run_id, pb.RUN_STATE_SUCCEEDED)
    [train] = done.tasks
    assert train.requested == ASKED
    assert train.limits == limits
    assert train.reserved == reserved
    assert train.peak_usage == peak


async def test_a_retry_is_shown_without_the_failed_attempts_figures_until_it_is_placed(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    spec = _spec(_name("retried"))
    spec.tasks[0].retry.CopyFrom(pb.RetryPolicy(max_attempts=2))
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=BOB)
    reply = await client.TriggerRun(pb.TriggerRunRequest(workflow_name=spec.name), metadata=ALICE)
    first = await cluster.next_request(reply.run.run_id)
    await cluster.bus.publish(
        prov.TaskPlaced(attempt=first.attempt, node_id="node-1", limits=ASKED, reserved=ASKED)
    )
    await cluster.bus.publish(
        prov.TaskFailed(
            attempt=first.attempt,
            node_id="node-1",
            kind=prov.FAILURE_KIND_OUT_OF_MEMORY,
            message="killed at its memory limit",
            peak_usage=ResourceUsage(memory_bytes=4 * GIB),
        )
    )

    second = await cluster.next_request(reply.run.run_id)
    assert (second.attempt.attempt, second.user) == (2, "alice")
    raised = Resources(cpu_millis=2000, memory_bytes=8 * GIB)
    await cluster.bus.publish(
        prov.TaskPlaced(attempt=second.attempt, node_id="node-2", limits=raised, reserved=raised)
    )
    await cluster.bus.publish(prov.TaskStarted(attempt=second.attempt, node_id="node-2"))

    train = await _task_until(client, reply.run.run_id, pb.TASK_STATE_RUNNING)
    assert (train.attempt, train.limits, train.reserved) == (2, raised, raised)
    assert not train.HasField("peak_usage")  # the first attempt's peak is not this one's


async def test_a_triggered_run_runs_for_who_applied_the_workflow(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    spec = _spec(_name("yearly"))
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=BOB)
    backfill = await client.BackfillWorkflow(
        pb.BackfillWorkflowRequest(
            workflow_name=spec.name,
            from_time=Timestamp(seconds=1577836800),  # 2020-01-01
            to_time=Timestamp(seconds=1590969600),  # 2020-06-01
        ),
        metadata=ALICE,
    )
    [run] = backfill.runs

    request = await cluster.next_request(run.run_id)

    assert request.user == "bob"


async def _task_until(
    client: SchedulerServiceStub, run_id: str, state: pb.TaskState.ValueType
) -> pb.TaskInstance:
    """Poll GetRun until the run's only task is in ``state``."""
    async with asyncio.timeout(BOUND):
        while True:
            reply: pb.GetRunResponse = await client.GetRun(
                pb.GetRunRequest(run_id=run_id), metadata=ALICE
            )
            [task] = reply.run.tasks
            if task.state == state:
                return task
            await asyncio.sleep(0.1)
