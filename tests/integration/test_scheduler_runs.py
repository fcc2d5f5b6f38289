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
import re
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from service_processes import running

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from strata.core.topics import TASKS_REQUESTED

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
DEV = (("authorization", "Bearer dev-token"),)
STALE = "strata_scheduler_stale_reports_total"


@dataclass(frozen=True)
class Scheduler:
    address: str
    metrics_port: int

    def sample(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics``; 0 when it is not there yet."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match[1] != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match[3])
        return 0.0


@pytest.fixture(scope="module")
async def scheduler(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scheduler]:
    folder = tmp_path_factory.mktemp("scheduler-runs")
    async with running("scheduler", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as service:
        yield Scheduler(service.address, service.metrics_port)


class Cluster:
    """The provisioner and its agents, as the scheduler sees them through Kafka."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._requests: dict[str, asyncio.Queue[pb.TaskRequested]] = defaultdict(asyncio.Queue)

    def heard(self, request: pb.TaskRequested) -> None:
        self._requests[request.attempt.run_id].put_nowait(request)

    async def next_request(self, run_id: str) -> pb.TaskRequested:
        async with asyncio.timeout(BOUND):
            return await self._requests[run_id].get()

    def pending(self, run_id: str) -> int:
        return self._requests[run_id].qsize()

    async def start(self, ref: TaskAttemptRef) -> None:
        await self.bus.publish(prov.TaskPlaced(attempt=ref, node_id="node-1"))
        await self.bus.publish(prov.TaskStarted(attempt=ref, node_id="node-1"))

    async def finish(self, ref: TaskAttemptRef, outputs: dict[str, Any] | None = None) -> None:
        struct = json_format.ParseDict(outputs or {}, Struct())
        await self.bus.publish(prov.TaskFinished(attempt=ref, node_id="node-1", outputs=struct))

    async def fail(self, ref: TaskAttemptRef, message: str) -> None:
        await self.bus.publish(
            prov.TaskFailed(
                attempt=ref, node_id="node-1", kind=prov.FAILURE_KIND_ERROR, message=message
            )
        )


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    bus = Bus("runs-test", kafka=load(KafkaSettings))
    cluster = Cluster(bus)
    requests = bus.consumer(TASKS_REQUESTED, group=f"runs-test-{uuid.uuid4().hex[:8]}")

    @requests.on(pb.TaskRequested)
    async def on_requested(event: pb.TaskRequested, envelope: Envelope) -> None:
        cluster.heard(event)

    async with bus:
        yield cluster


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[SchedulerServiceStub]:
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        yield SchedulerServiceStub(channel)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _task(task_id: str, *deps: str, **fields: Any) -> pb.TaskSpec:
    return pb.TaskSpec(
        task_id=task_id,
        entrypoint=f"pipeline.tasks:{task_id.replace('-', '_')}",
        depends_on=deps,
        **fields,
    )


async def _apply_and_trigger(
    client: SchedulerServiceStub, spec: pb.WorkflowSpec, request_id: str = ""
) -> pb.Run:
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    reply = await client.TriggerRun(
        pb.TriggerRunRequest(workflow_name=spec.name, request_id=request_id), metadata=DEV
    )
    run: pb.Run = reply.run
    return run


async def _run_until(
    client: SchedulerServiceStub, run_id: str, state: pb.RunState.ValueType
) -> pb.Run:
    async with asyncio.timeout(BOUND):
        while True:
            run: pb.Run = (await client.GetRun(pb.GetRunRequest(run_id=run_id), metadata=DEV)).run
            if run.state == state:
                return run
            await asyncio.sleep(0.1)


def _states(run: pb.Run) -> dict[str, str]:
    return {t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in run.tasks}


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
