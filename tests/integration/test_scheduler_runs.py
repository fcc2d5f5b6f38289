"""Runs on a real ``python -m strata.scheduler``, over the real Kafka and Postgres.

The test plays the provisioner and the agents with a real Bus: it consumes the
scheduler's ``TaskRequested`` from ``strata.tasks.requested`` and answers on
``strata.tasks.events`` as they would (started, then finished with outputs, or
failed, or lost). What a team relies on: the DAG advances by itself through a
chain, parallel branches and a condition (the branch not taken SKIPPED), a failing
task is retried as declared and then fails the run, a late report of an attempt
already given up on changes nothing (and is counted), and TriggerRun with a
repeated request id starts nothing new.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from scheduler_peer import (
    BOUND,
    DEV,
    TOKENS,
    Cluster,
    Scheduler,
    playing_cluster,
    scheduler_client,
)
from scheduler_peer import apply_and_trigger as _apply_and_trigger
from scheduler_peer import name as _name
from scheduler_peer import run_until as _run_until
from scheduler_peer import states as _states
from scheduler_peer import task as _task
from service_processes import running

from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub

pytestmark = pytest.mark.integration

STALE = "strata_scheduler_stale_reports_total"


@pytest.fixture(scope="module")
async def scheduler(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scheduler]:
    folder = tmp_path_factory.mktemp("scheduler-runs")
    async with running("scheduler", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as service:
        yield Scheduler(service.address, service.metrics_port)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with playing_cluster("runs-test") as cluster:
        yield cluster


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[SchedulerServiceStub]:
    async with scheduler_client(scheduler.address) as stub:
        yield stub


async def test_a_dag_runs_to_success_with_the_branch_not_taken_skipped(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    spec = pb.WorkflowSpec(
        name=_name("delivery"),
        tasks=[
            _task("extract"),
            _task("features-a", "extract"),
            _task("features-b", "extract"),
            _task("compare", "features-a", "features-b"),
            _task("deploy", "compare", condition="outputs.compare.better"),
            _task("report", "compare", condition="!outputs.compare.better"),
        ],
    )
    request_id = uuid.uuid4().hex
    run = await _apply_and_trigger(client, spec, request_id)
    assert run.state == pb.RUN_STATE_RUNNING
    outputs: dict[str, dict[str, Any]] = {
        "extract": {"rows": 10},
        "features-a": {"columns": 3},
        "features-b": {"columns": 4},
        "compare": {"better": False},
        "report": {},
    }
    heard: list[pb.TaskRequested] = []
    while len(heard) < len(outputs):
        request = await cluster.next_request(run.run_id)
        heard.append(request)
        await cluster.start(request.attempt)
        await cluster.finish(request.attempt, outputs[request.attempt.task_id])

    done = await _run_until(client, run.run_id, pb.RUN_STATE_SUCCEEDED)
    assert _states(done) == {
        "extract": "SUCCEEDED",
        "features-a": "SUCCEEDED",
        "features-b": "SUCCEEDED",
        "compare": "SUCCEEDED",
        "deploy": "SKIPPED",
        "report": "SUCCEEDED",
    }
    order = [r.attempt.task_id for r in heard]
    assert order[0] == "extract"
    assert set(order[1:3]) == {"features-a", "features-b"}
    assert order[3:] == ["compare", "report"]
    compare = heard[3]
    assert {k: json_format.MessageToDict(v) for k, v in compare.upstream_outputs.items()} == {
        "extract": {"rows": 10},
        "features-a": {"columns": 3},
        "features-b": {"columns": 4},
    }
    by_id = {t.task_id: t for t in done.tasks}
    assert json_format.MessageToDict(by_id["compare"].outputs) == {"better": False}
    assert by_id["compare"].node_id == "node-1"
    assert "outputs.compare.better" in by_id["deploy"].message

    again = await client.TriggerRun(
        pb.TriggerRunRequest(workflow_name=spec.name, request_id=request_id), metadata=DEV
    )
    assert again.run.run_id == run.run_id
    listed = await client.ListRuns(pb.ListRunsRequest(workflow_name=spec.name), metadata=DEV)
    assert [r.run_id for r in listed.runs] == [run.run_id]
    running = await client.ListRuns(
        pb.ListRunsRequest(workflow_name=spec.name, states=[pb.RUN_STATE_RUNNING]), metadata=DEV
    )
    assert list(running.runs) == []


async def test_triggering_a_workflow_never_applied_is_not_found_naming_it(
    client: SchedulerServiceStub,
) -> None:
    name = _name("never-applied")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.TriggerRun(pb.TriggerRunRequest(workflow_name=name), metadata=DEV)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert name in (refused.value.details() or "")


async def test_a_failing_task_is_retried_as_declared_then_fails_the_run(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    retry = pb.RetryPolicy(max_attempts=3, initial_backoff=Duration(nanos=200_000_000))
    spec = pb.WorkflowSpec(
        name=_name("flaky"), tasks=[_task("train", retry=retry), _task("deploy", "train")]
    )
    run = await _apply_and_trigger(client, spec)
    attempts = []
    for _ in range(3):
        request = await cluster.next_request(run.run_id)
        attempts.append((request.attempt.task_id, request.attempt.attempt))
        await cluster.start(request.attempt)
        await cluster.fail(request.attempt, "ValueError: column 'eta' missing")

    failed = await _run_until(client, run.run_id, pb.RUN_STATE_FAILED)
    assert attempts == [("train", 1), ("train", 2), ("train", 3)]
    assert _states(failed) == {"train": "FAILED", "deploy": "UPSTREAM_FAILED"}
    assert "'train' failed" in failed.message
    assert "column 'eta' missing" in failed.message
    assert cluster.pending(run.run_id) == 0


async def test_a_late_report_from_an_older_attempt_is_ignored_and_counted(
    client: SchedulerServiceStub, cluster: Cluster, scheduler: Scheduler
) -> None:
    spec = pb.WorkflowSpec(
        name=_name("fenced"),
        tasks=[_task("train", retry=pb.RetryPolicy(max_attempts=2)), _task("deploy", "train")],
    )
    run = await _apply_and_trigger(client, spec)
    first = await cluster.next_request(run.run_id)
    await cluster.start(first.attempt)
    await cluster.bus.publish(
        prov.TaskLost(attempt=first.attempt, node_id="node-1", reason="no heartbeat for 15s")
    )
    second = await cluster.next_request(run.run_id)
    assert second.attempt.attempt == 2
    await cluster.start(second.attempt)
    await _until_task(client, run.run_id, "train", pb.TASK_STATE_RUNNING)
    before = await asyncio.to_thread(scheduler.sample, STALE, event="TaskFinished")

    await cluster.finish(first.attempt, {"from": "the lost attempt"})
    await _until_counted(scheduler, before)
    still = (await client.GetRun(pb.GetRunRequest(run_id=run.run_id), metadata=DEV)).run
    assert still.state == pb.RUN_STATE_RUNNING
    assert _states(still) == {"train": "RUNNING", "deploy": "PENDING"}
    assert still.tasks[0].attempt == 2

    await cluster.finish(second.attempt, {"from": "the current attempt"})
    deploy = await cluster.next_request(run.run_id)
    assert deploy.attempt.task_id == "deploy"
    assert json_format.MessageToDict(deploy.upstream_outputs["train"]) == {
        "from": "the current attempt"
    }


async def _until_task(
    client: SchedulerServiceStub, run_id: str, task_id: str, state: pb.TaskState.ValueType
) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            run = (await client.GetRun(pb.GetRunRequest(run_id=run_id), metadata=DEV)).run
            if any(t.task_id == task_id and t.state == state for t in run.tasks):
                return
            await asyncio.sleep(0.1)


async def _until_counted(scheduler: Scheduler, before: float) -> None:
    """Wait until the scheduler counted one more stale TaskFinished than ``before``."""
    async with asyncio.timeout(BOUND):
        while True:
            now = await asyncio.to_thread(scheduler.sample, STALE, event="TaskFinished")
            if now > before:
                return
            await asyncio.sleep(0.1)
