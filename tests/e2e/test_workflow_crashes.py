"""A node or the provisioner killed mid-run, and what the team still gets.

SIGKILL of an agent while its task runs: once the node's lease passes (shortened to
3 s with STRATA_PROVISIONER_LEASE) the attempt is declared lost and retried on the
other agent, although the task allows a single attempt (a lost attempt spends none
of its retries, and the run counts it as lost); a result of the lost attempt
arriving late (published on ``strata.tasks.events`` as its agent would have, while
the retry runs) is ignored and counted, and the run ends with the retry's outcome.
SIGKILL of the provisioner while a task runs, then a restart on the same address:
the agents reconnect, the report of the task that ended meanwhile comes through,
and every task's side effect happens exactly once.

Each story starts its own provisioner, agents and scheduler, since it kills one.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from scheduler_peer import Scheduler
from service_processes import ServiceProcess, running

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1.provisioner_pb2 import TaskFinished
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from tests.e2e.workflow_cluster import (
    BOUND,
    SMALL,
    Project,
    apply,
    get_run,
    platform,
    states,
    task_of,
    trigger,
    until,
    write_workflow,
)

pytestmark = pytest.mark.integration

STALE = "strata_scheduler_stale_reports_total"


async def test_a_killed_agents_attempt_is_retried_on_another_and_its_late_result_ignored(
    tmp_path: Path,
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    project = write_workflow(
        code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}")


        @flow.task(retry=Retry(attempts=1, backoff=timedelta(0)))
        def train():
            attempt = mark("train")
            if attempt == 1:
                time.sleep(600)  # until its agent is killed (its worker goes with it)
            wait_for("release")
            return {"attempt": attempt}
        """,
    )
    async with (
        platform(tmp_path, code, agents=(SMALL, SMALL), STRATA_PROVISIONER_LEASE="PT3S") as cluster,
        running("scheduler", tmp_path) as scheduler,
    ):
        await apply(project, scheduler)
        run_id = await trigger(scheduler, project.name)
        running_first = await until(scheduler, run_id, task="train", state="RUNNING")
        first = task_of(running_first, "train").node_id
        await _marked(project, "train", lines=1)
        [victim] = [a for a in cluster.agents if a.node_id == first]
        victim.process.process.send_signal(signal.SIGKILL)
        await victim.process.process.wait()
        retried = await until(scheduler, run_id, task="train", state="RUNNING", attempt=2)

        await _late_result(run_id, first)
        await _counted(scheduler, STALE, event="TaskFinished")
        still = await get_run(scheduler, run_id)
        project.release("release")
        run = await until(scheduler, run_id, state="SUCCEEDED")

    assert task_of(retried, "train").node_id not in ("", first)
    assert (states(still)["train"], task_of(still, "train").attempt) == ("RUNNING", 2)
    train = task_of(run, "train")
    assert (train.attempt, train.node_id) == (2, task_of(retried, "train").node_id)
    assert train.losses == 1
    assert json_format.MessageToDict(train.outputs) == {"attempt": 2}
    assert project.runs_of("train") == 2


async def test_a_killed_provisioner_restarts_and_the_run_finishes_with_each_task_run_once(
    tmp_path: Path,
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    project = write_workflow(
        code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}")


        @flow.task()
        def extract():
            mark("extract")
            return {"rows": 3}


        @flow.task(depends_on=[extract])
        def clean(extract):
            mark("clean")
            wait_for("release")
            return {"rows": extract["rows"] - 1}


        @flow.task(depends_on=[clean])
        def publish(clean):
            mark("publish", f"{clean['rows']:g}")
            return {}
        """,
    )
    restarted = tmp_path / "restarted"
    restarted.mkdir()
    quick = {"STRATA_AGENT_RECONNECT_MAX": "1"}
    async with (
        platform(tmp_path, code, agent_env=quick) as cluster,
        running("scheduler", tmp_path) as scheduler,
    ):
        await apply(project, scheduler)
        run_id = await trigger(scheduler, project.name)
        await _marked(project, "clean", lines=1)
        cluster.provisioner.process.send_signal(signal.SIGKILL)
        await cluster.provisioner.process.wait()
        project.release("release")  # clean ends while no provisioner listens
        port = cluster.provisioner.address.rsplit(":", 1)[1]
        async with running("provisioner", restarted, STRATA_SERVICE_PROVISIONER_PORT=port):
            run = await until(scheduler, run_id, state="SUCCEEDED")

    assert states(run) == dict.fromkeys(["extract", "clean", "publish"], "SUCCEEDED")
    assert all(t.attempt == 1 for t in run.tasks), run
    assert {t: project.lines_of(t) for t in ("extract", "clean", "publish")} == {
        "extract": ["ran"],
        "clean": ["ran"],
        "publish": ["2"],
    }


async def _marked(project: Project, task: str, lines: int) -> None:
    """Until ``task`` wrote ``lines`` marks (its code runs)."""
    async with asyncio.timeout(BOUND):
        while True:
            if project.runs_of(task) >= lines:
                return
            await asyncio.sleep(0.1)


async def _late_result(run_id: str, node_id: str) -> None:
    """Attempt 1's TaskFinished, as the killed agent would have sent it had it lived on."""
    outputs = json_format.ParseDict({"attempt": 1}, Struct())
    late = TaskFinished(
        attempt=TaskAttemptRef(run_id=run_id, task_id="train", attempt=1),
        node_id=node_id,
        outputs=outputs,
    )
    async with Bus("e2e-late-agent", kafka=load(KafkaSettings)) as bus:
        await bus.publish(late)


async def _counted(scheduler: ServiceProcess, metric: str, **labels: str) -> None:
    """Until the scheduler's ``metric`` with ``labels`` is at least 1."""
    sampled = Scheduler(scheduler.address, scheduler.metrics_port)
    async with asyncio.timeout(BOUND):
        while True:
            if sampled.sample(metric, **labels) >= 1:
                return
            await asyncio.sleep(0.2)
