"""``strata workflow run|status|cancel|backfill`` against a real ``python -m strata.scheduler``.

The test plays the provisioner and the agents over the real Kafka (as in
test_scheduler_runs.py) while the CLI runs as a user would run it, in a process of
its own. What a team relies on: ``run --follow`` shows every task's state, node
and attempt as it happens and exits 0 when the run succeeds, 1 with how it ended
otherwise; ``status`` shows each task with its attempt, node, duration and why, and
what it asked for, got reserved and used;
``cancel`` stops a run; ``backfill`` makes one run per past tick; an unknown
workflow or run, or a malformed option, is one line naming it, exit 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from scheduler_peer import DEV, TOKENS, Cluster
from service_processes import running

from strata.api.common.v1.resources_pb2 import Resources, ResourceUsage
from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""


async def _strata_process(
    address: str, *args: str, provisioner: str = "127.0.0.1:1"
) -> asyncio.subprocess.Process:
    """The ``strata`` CLI against the scheduler at ``address`` as the developer, started."""
    env = {
        **os.environ,
        "STRATA_SERVICE_SCHEDULER_PORT": address.rsplit(":", 1)[1],
        "STRATA_SERVICE_PROVISIONER_PORT": provisioner.rsplit(":", 1)[1],
        "STRATA_AUTH_CLIENT_TOKEN": "dev-token",
        "COLUMNS": "200",
        "PYTHONUNBUFFERED": "1",  # a followed run's heading shows before the run ends
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strata.sdk.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _heading(process: asyncio.subprocess.Process) -> str:
    """The first line ``run --follow`` prints: once it shows, every later change will."""
    assert process.stdout is not None
    async with asyncio.timeout(BOUND):
        line = await process.stdout.readline()
    return line.decode().rstrip("\n")


async def _ended(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(BOUND):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _strata(
    address: str, *args: str, provisioner: str = "127.0.0.1:1"
) -> tuple[int, str, str]:
    """Run the CLI to its end; exit code, stdout, stderr."""
    return await _ended(await _strata_process(address, *args, provisioner=provisioner))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _apply(client: SchedulerServiceStub, name: str, **fields: object) -> None:
    spec = pb.WorkflowSpec(
        name=name,
        tasks=[
            pb.TaskSpec(task_id="extract", entrypoint="pipeline.tasks:extract"),
            pb.TaskSpec(task_id="train", entrypoint="pipeline.tasks:train", depends_on=["extract"]),
        ],
        **fields,  # type: ignore[arg-type]
    )
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)


async def _only_run(client: SchedulerServiceStub, workflow: str) -> str:
    """The id of the workflow's run, once there is one."""
    async with asyncio.timeout(BOUND):
        while True:
            reply = await client.ListRuns(pb.ListRunsRequest(workflow_name=workflow), metadata=DEV)
            if reply.runs:
                run_id: str = reply.runs[0].run_id
                return run_id
            await asyncio.sleep(0.1)


async def test_run_follow_shows_each_task_live_and_exits_0_when_the_run_succeeds(
    address: str, client: SchedulerServiceStub, cluster: Cluster
) -> None:
    name = _name("followed")
    await _apply(client, name)
    process = await _strata_process(
        address, "workflow", "run", name, "--param", "epochs=3", "--param", "note=x", "--follow"
    )
    heading = await _heading(process)
    run_id = await _only_run(client, name)
    assert heading == f"run {run_id} of {name} version 1: RUNNING"
    for task_id in ("extract", "train"):
        request = await cluster.next_request(run_id)
        assert request.attempt.task_id == task_id
        assert json_format.MessageToDict(request.args) == {"epochs": 3, "note": "x"}
        await cluster.start(request.attempt)
        await cluster.finish(request.attempt)

    code, out, err = await _ended(process)
    assert code == 0, err
    lines = out.splitlines()
    changes = [" ".join(line.split()[1:]) for line in lines if line[:2].isdigit()]
    assert changes == [
        "extract PLACED on node-1 (attempt 1)",
        "extract RUNNING on node-1 (attempt 1)",
        "extract SUCCEEDED on node-1 (attempt 1)",
        "train REQUESTED (attempt 1)",
        "train PLACED on node-1 (attempt 1)",
        "train RUNNING on node-1 (attempt 1)",
        "train SUCCEEDED on node-1 (attempt 1)",
    ]
    assert lines[-1] == f"run {run_id} SUCCEEDED"

    code, out, err = await _strata(address, "workflow", "status", run_id)
    assert code == 0, err
    assert f"run {run_id} of {name} version 1: SUCCEEDED" in out
    tasks_table = [line.split("│") for line in out.splitlines() if line.count("│") == 7]
    cells = {r[1].strip(): [c.strip() for c in r[2:6]] for r in tasks_table}
    assert cells["extract"][:3] == ["SUCCEEDED", "1", "node-1"]
    assert cells["train"][:3] == ["SUCCEEDED", "1", "node-1"]
    assert cells["train"][3].endswith("s")


async def test_status_shows_what_each_task_asked_for_got_reserved_and_used(
    address: str, client: SchedulerServiceStub, cluster: Cluster
) -> None:
    name = _name("sized")
    gib = 2**30
    asked = Resources(cpu_millis=2000, memory_bytes=4 * gib)
    spec = pb.WorkflowSpec(
        name=name,
        tasks=[pb.TaskSpec(task_id="train", entrypoint="pipeline.tasks:train", resources=asked)],
    )
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    code, out, err = await _strata(address, "workflow", "run", name)
    assert code == 0, err
    run_id = out.split()[1]
    request = await cluster.next_request(run_id)
    reserved = Resources(cpu_millis=500, memory_bytes=3 * gib // 2)
    peak = ResourceUsage(cpu_millis=800, memory_bytes=int(1.2 * gib))
    await cluster.bus.publish(
        prov.TaskPlaced(attempt=request.attempt, node_id="node-1", limits=asked, reserved=reserved)
    )
    await cluster.bus.publish(
        prov.TaskFinished(attempt=request.attempt, node_id="node-1", peak_usage=peak)
    )
    async with asyncio.timeout(BOUND):
        while True:
            reply = await client.GetRun(pb.GetRunRequest(run_id=run_id), metadata=DEV)
            if reply.run.state == pb.RUN_STATE_SUCCEEDED:
                break
            await asyncio.sleep(0.1)

    code, out, err = await _strata(address, "workflow", "status", run_id)

    assert code == 0, err
    [row] = [line for line in out.splitlines() if "asked" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells == [
        "train",
        "4 GiB asked · 1.5 GiB reserved · 1.2 GiB used",
        "2 CPU asked · 0.5 CPU reserved · 0.8 CPU used",
    ]


async def test_cancel_stops_a_followed_run_which_then_exits_1_saying_so(
    address: str, client: SchedulerServiceStub, cluster: Cluster
) -> None:
    name = _name("cancelled")
    await _apply(client, name)
    process = await _strata_process(address, "workflow", "run", name, "--follow")
    await _heading(process)
    run_id = await _only_run(client, name)
    request = await cluster.next_request(run_id)
    await cluster.start(request.attempt)

    code, out, err = await _strata(
        address, "workflow", "cancel", run_id, "--reason", "bad input data"
    )
    assert code == 0, err
    assert out.strip() == f"run {run_id}: CANCELLING (stopping extract)"
    stop = await cluster.next_stop(run_id)
    await cluster.bus.publish(
        prov.TaskFailed(attempt=stop.attempt, kind=prov.FAILURE_KIND_CANCELLED, message="stopped")
    )

    code, out, err = await _ended(process)
    assert code == 1
    assert err.strip() == f"run {run_id} CANCELLED: bad input data"
    assert "extract CANCELLED on node-1 (attempt 1)" in out


async def test_status_of_a_queued_run_says_what_it_waits_for(
    address: str, client: SchedulerServiceStub
) -> None:
    name = _name("queued")
    await _apply(client, name, max_active_runs=1)
    code, _, err = await _strata(address, "workflow", "run", name)
    assert code == 0, err
    code, second, err = await _strata(address, "workflow", "run", name)
    assert code == 0, err
    assert second.strip().endswith(": QUEUED")
    queued_id = second.split()[1]
    code, out, err = await _strata(address, "workflow", "status", queued_id)
    assert code == 0, err
    assert "QUEUED" in out
    assert "max_active_runs" in out


async def test_status_says_why_a_requested_task_waits_for_a_node(
    address: str, client: SchedulerServiceStub, tmp_path: Path
) -> None:
    name, queue = _name("waits"), _name("q")
    await _apply(client, name, queue=queue)
    code, out, err = await _strata(address, "workflow", "run", name)
    assert code == 0, err
    run_id = out.split()[1]

    code, out, err = await _strata(address, "workflow", "status", run_id)
    assert code == 0, err
    assert "why tasks wait for a node is unknown: the provisioner is not reachable" in out

    async with (
        running("provisioner", tmp_path, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as provisioner,
        grpc.aio.insecure_channel(provisioner.address) as channel,
    ):
        reason = await _waiting_for(ProvisionerServiceStub(channel), queue, run_id)
        code, out, err = await _strata(
            address, "workflow", "status", run_id, provisioner=provisioner.address
        )
    assert code == 0, err
    # The tasks table comes first; the usage table below it has a row per task too.
    row, usage = [line for line in out.splitlines() if "│ extract" in line]
    assert "REQUESTED" in row
    assert f"waiting for a node: {reason}" in row
    assert "asked" in usage


async def _waiting_for(stub: ProvisionerServiceStub, queue: str, run_id: str) -> str:
    """Why the provisioner has not placed the run's attempt, once it says."""
    async with asyncio.timeout(BOUND):
        while True:
            reply = await stub.GetQueue(prov.GetQueueRequest(name=queue), metadata=DEV)
            for pending in reply.queue.pending:
                if pending.attempt.run_id == run_id and pending.waiting_for:
                    reason: str = pending.waiting_for
                    return reason
            await asyncio.sleep(0.1)


async def test_backfill_makes_one_run_per_past_tick(
    address: str, client: SchedulerServiceStub
) -> None:
    name = _name("yearly")
    await _apply(client, name, triggers=[pb.Trigger(cron=pb.CronTrigger(expression="0 0 1 1 *"))])
    args = ("workflow", "backfill", name, "--from", "2020-01-01", "--to", "2022-06-01")
    code, out, err = await _strata(address, *args, "--max-concurrent", "1")
    assert code == 0, err
    assert f"{name}: 3 ticks, 3 new runs, at most 1 at once" in out
    for year in ("2020", "2021", "2022"):
        assert f"{year}-01-01 00:00:00 UTC" in out
    assert out.count("RUNNING") == 1
    assert out.count("QUEUED") == 2
    code, out, err = await _strata(address, *args)
    assert code == 0, err
    assert f"{name}: 3 ticks, 0 new runs" in out


async def test_backfill_of_a_dataset_makes_one_run_per_partition_that_arrived_before(
    address: str, client: SchedulerServiceStub, cluster: Cluster
) -> None:
    dataset = _name("deliveries")
    for partition in ("date=2026-01-01", "date=2026-01-02", "region=eu", "date=2026-01-03"):
        arrived = DataArrived(dataset=dataset, partition=partition, checksum=f"sha256:{partition}")
        await cluster.bus.publish(arrived)
    # A workflow applied now watches the dataset: its run for a partition published
    # after the others (same key, so read after them) says they were all seen.
    probe = _name("probe")
    await _apply(client, probe, triggers=[_data(dataset, "")])
    await cluster.bus.publish(DataArrived(dataset=dataset, partition="last=1", checksum="x"))
    await _only_run(client, probe)

    name = _name("daily")
    await _apply(client, name, triggers=[_data(dataset, "date=*")])
    args = ("workflow", "backfill", name, "--dataset", dataset)
    span = ("--from", "2000-01-01", "--to", "2100-01-01", "--max-concurrent", "2")
    code, out, err = await _strata(address, *args, *span)
    assert code == 0, err
    assert f"{name}: 3 partitions, 3 new runs, at most 2 at once" in out
    rows = [[c.strip() for c in line.split("│")[1:4]] for line in out.splitlines() if "│" in line]
    assert [(r[0], r[2]) for r in rows] == [
        ("date=2026-01-01", "RUNNING"),
        ("date=2026-01-02", "RUNNING"),
        ("date=2026-01-03", "QUEUED"),
    ]
    code, out, err = await _strata(address, *args, *span)
    assert code == 0, err
    assert f"{name}: 3 partitions, 0 new runs" in out


def _data(dataset: str, glob: str) -> pb.Trigger:
    return pb.Trigger(data_arrival=pb.DataArrivalTrigger(dataset=dataset, partition_glob=glob))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("workflow", "run", "never-applied-wf"), "workflow 'never-applied-wf' is not applied"),
        (("workflow", "status", str(uuid.UUID(int=7))), f"run '{uuid.UUID(int=7)}': not found"),
        (("workflow", "status", "not-a-uuid"), "run_id"),
        (("workflow", "run", "any", "--param", "epochs"), "--param 'epochs': expected key=value"),
        (("workflow", "backfill", "any", "--from", "yesterday", "--to", "2020-01-01"), "--from"),
    ],
)
async def test_bad_input_is_one_line_naming_it_and_exit_1(
    address: str, args: tuple[str, ...], expected: str
) -> None:
    code, _, err = await _strata(address, *args)
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err
