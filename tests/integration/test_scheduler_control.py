"""Cancel, watch and backfill runs on a real ``python -m strata.scheduler``.

The test plays the provisioner and the agents over the real Kafka, as in
test_scheduler_runs.py, and also hears the TaskCancelRequested the scheduler sends.
What a team relies on: cancelling a run cancels what has not started, asks the
running attempt to stop, and ends CANCELLED once it has; WatchRun gives a snapshot
and then every change in order, and ends with the run; a backfill over three past
ticks makes three runs, at most max_concurrent active at once, in tick order, and
asking again makes none.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from scheduler_peer import DEV, Cluster

from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _task(task_id: str, *deps: str) -> pb.TaskSpec:
    return pb.TaskSpec(task_id=task_id, entrypoint=f"pipeline.tasks:{task_id}", depends_on=deps)


async def _start(client: SchedulerServiceStub, spec: pb.WorkflowSpec) -> pb.Run:
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    reply = await client.TriggerRun(pb.TriggerRunRequest(workflow_name=spec.name), metadata=DEV)
    run: pb.Run = reply.run
    return run


async def _get(client: SchedulerServiceStub, run_id: str) -> pb.Run:
    run: pb.Run = (await client.GetRun(pb.GetRunRequest(run_id=run_id), metadata=DEV)).run
    return run


async def _until_state(
    client: SchedulerServiceStub, run_id: str, state: pb.RunState.ValueType
) -> pb.Run:
    async with asyncio.timeout(BOUND):
        while True:
            run = await _get(client, run_id)
            if run.state == state:
                return run
            await asyncio.sleep(0.1)


async def _until_task(
    client: SchedulerServiceStub, run_id: str, task_id: str, state: pb.TaskState.ValueType
) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            run = await _get(client, run_id)
            if any(t.task_id == task_id and t.state == state for t in run.tasks):
                return
            await asyncio.sleep(0.1)


def _states(run: pb.Run) -> dict[str, str]:
    return {t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in run.tasks}


async def test_cancel_stops_the_running_attempt_and_ends_the_run_cancelled(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    run = await _start(
        client,
        pb.WorkflowSpec(name=_name("cancel"), tasks=[_task("train"), _task("deploy", "train")]),
    )
    request = await cluster.next_request(run.run_id)
    await cluster.start(request.attempt)
    await _until_task(client, run.run_id, "train", pb.TASK_STATE_RUNNING)

    reply = await client.CancelRun(
        pb.CancelRunRequest(run_id=run.run_id, reason="wrong data"), metadata=DEV
    )
    assert reply.run.state == pb.RUN_STATE_CANCELLING
    assert _states(reply.run) == {"train": "RUNNING", "deploy": "CANCELLED"}
    stop = await cluster.next_stop(run.run_id)
    assert (stop.attempt.task_id, stop.attempt.attempt) == ("train", 1)
    assert stop.reason == "wrong data"

    await cluster.bus.publish(
        prov.TaskFailed(
            attempt=stop.attempt,
            node_id="node-1",
            kind=prov.FAILURE_KIND_CANCELLED,
            message="stopped on request",
        )
    )
    done = await _until_state(client, run.run_id, pb.RUN_STATE_CANCELLED)
    assert _states(done) == {"train": "CANCELLED", "deploy": "CANCELLED"}
    assert done.message == "wrong data"
    assert done.HasField("finished_at")
    again = await client.CancelRun(pb.CancelRunRequest(run_id=run.run_id), metadata=DEV)
    assert again.run.state == pb.RUN_STATE_CANCELLED
    assert cluster.pending(run.run_id) == 0


async def test_cancelling_a_run_with_nothing_running_ends_it_at_once(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    name = _name("queued-cancel")
    spec = pb.WorkflowSpec(name=name, tasks=[_task("train")], max_active_runs=1)
    first = await _start(client, spec)
    second = (await client.TriggerRun(pb.TriggerRunRequest(workflow_name=name), metadata=DEV)).run
    assert second.state == pb.RUN_STATE_QUEUED
    reply = await client.CancelRun(pb.CancelRunRequest(run_id=second.run_id), metadata=DEV)
    assert reply.run.state == pb.RUN_STATE_CANCELLED
    assert _states(reply.run) == {"train": "CANCELLED"}
    assert reply.run.message == "cancelled by alice"
    await cluster.next_request(first.run_id)


async def test_cancelling_or_watching_a_run_that_does_not_exist_is_not_found(
    client: SchedulerServiceStub,
) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.CancelRun(pb.CancelRunRequest(run_id=missing), metadata=DEV)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.WatchRun(pb.WatchRunRequest(run_id=missing), metadata=DEV).read()
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing in (refused.value.details() or "")


async def test_watch_run_gives_a_snapshot_then_every_change_in_order_and_ends(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    run = await _start(
        client, pb.WorkflowSpec(name=_name("watched"), tasks=[_task("a"), _task("b", "a")])
    )
    stream = client.WatchRun(pb.WatchRunRequest(run_id=run.run_id), metadata=DEV)
    first = await asyncio.wait_for(stream.read(), BOUND)
    assert first.WhichOneof("change") == "snapshot"
    assert _states(first.snapshot) == {"a": "REQUESTED", "b": "PENDING"}

    for task_id in ("a", "b"):
        request = await cluster.next_request(run.run_id)
        assert request.attempt.task_id == task_id
        await cluster.start(request.attempt)
        await cluster.finish(request.attempt)

    seen = []
    async with asyncio.timeout(BOUND):
        while (message := await stream.read()) is not grpc.aio.EOF:
            seen.append(_change(message))
    assert seen == [
        ("a", "REQUESTED", "PLACED"),
        ("a", "PLACED", "RUNNING"),
        ("a", "RUNNING", "SUCCEEDED"),
        ("b", "PENDING", "REQUESTED"),
        ("b", "REQUESTED", "PLACED"),
        ("b", "PLACED", "RUNNING"),
        ("b", "RUNNING", "SUCCEEDED"),
        ("run", "RUNNING", "SUCCEEDED"),
    ]

    late = [m async for m in client.WatchRun(pb.WatchRunRequest(run_id=run.run_id), metadata=DEV)]
    assert [m.WhichOneof("change") for m in late] == ["snapshot"]
    assert late[0].snapshot.state == pb.RUN_STATE_SUCCEEDED


def _change(message: pb.WatchRunResponse) -> tuple[str, str, str]:
    if message.WhichOneof("change") == "run_state_changed":
        run = message.run_state_changed
        return "run", _run_state(run.previous_state), _run_state(run.state)
    task = message.task_state_changed
    return task.attempt.task_id, _task_state(task.previous_state), _task_state(task.state)


def _run_state(state: pb.RunState.ValueType) -> str:
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def _task_state(state: pb.TaskState.ValueType) -> str:
    return pb.TaskState.Name(state).removeprefix("TASK_STATE_")


async def test_a_backfill_over_three_past_ticks_makes_three_runs_one_at_a_time(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    name = _name("yearly")
    spec = pb.WorkflowSpec(
        name=name,
        tasks=[_task("train")],
        triggers=[pb.Trigger(cron=pb.CronTrigger(expression="0 0 1 1 *"))],
    )
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    request = pb.BackfillWorkflowRequest(
        workflow_name=name,
        from_time=_stamp(datetime(2020, 1, 1, tzinfo=UTC)),
        to_time=_stamp(datetime(2022, 6, 1, tzinfo=UTC)),
        max_concurrent=1,
    )
    reply = await client.BackfillWorkflow(request, metadata=DEV)
    assert reply.created == 3
    assert [r.cause.cron_tick.ToDatetime().year for r in reply.runs] == [2020, 2021, 2022]
    assert [r.state for r in reply.runs] == [
        pb.RUN_STATE_RUNNING,
        pb.RUN_STATE_QUEUED,
        pb.RUN_STATE_QUEUED,
    ]

    for run in reply.runs:
        task = await cluster.next_request(run.run_id)
        tick = json_format.MessageToDict(task.args)["tick"]
        assert tick.startswith(str(run.cause.cron_tick.ToDatetime().year))
        await cluster.start(task.attempt)
        await cluster.finish(task.attempt)
        await _until_state(client, run.run_id, pb.RUN_STATE_SUCCEEDED)

    again = await client.BackfillWorkflow(request, metadata=DEV)
    assert again.created == 0
    assert [r.run_id for r in again.runs] == [r.run_id for r in reply.runs]


async def test_a_backfill_of_a_workflow_without_cron_is_refused_naming_why(
    client: SchedulerServiceStub,
) -> None:
    name = _name("no-cron")
    spec = pb.WorkflowSpec(name=name, tasks=[_task("train")])
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    request = pb.BackfillWorkflowRequest(
        workflow_name=name,
        from_time=_stamp(datetime(2020, 1, 1, tzinfo=UTC)),
        to_time=_stamp(datetime(2021, 1, 1, tzinfo=UTC)),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.BackfillWorkflow(request, metadata=DEV)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no cron trigger" in (refused.value.details() or "")


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
