"""How a run ends when a task does not simply succeed, as the team sees it through the CLI:
each attempt is told its run, task, attempt number and node
(``strata.sdk.workflows.task_context``), a retry its next number; a task that raises is
retried as declared and then fails the run, its traceback in ``strata workflow logs``;
a task over its memory limit is reported out of memory in ``strata workflow status``;
``strata workflow cancel`` stops a running attempt's process; a task larger than every
node waits, saying so in ``status``, and runs once a bigger agent registers.

The module shares one provisioner, one small agent (one CPU) and one scheduler; the
bigger agent joins in the last story.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from service_processes import ServiceProcess

from tests.e2e.workflow_cluster import (
    BOUND,
    GIB,
    Capacity,
    Platform,
    Project,
    apply,
    states,
    strata,
    task_of,
    trigger,
    until,
    write_workflow,
)

pytestmark = pytest.mark.integration


async def test_a_task_that_raises_is_retried_as_declared_then_fails_the_run_with_its_traceback(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}")


        @flow.task(retry=Retry(attempts=2, backoff=timedelta(0)))
        def parse():
            attempt = mark("parse")
            raise ValueError(f"row 7 has no date (attempt {attempt})")


        @flow.task(depends_on=[parse])
        def publish():
            mark("publish")
            return {}
        """,
    )
    await apply(project, scheduler)
    run_id = await trigger(scheduler, project.name)
    run = await until(scheduler, run_id, state="FAILED")
    code, out, err = await strata(
        "workflow", "logs", run_id, "parse", scheduler=scheduler, cwd=tmp_path
    )

    parse = task_of(run, "parse")
    assert (parse.attempt, project.runs_of("parse"), project.runs_of("publish")) == (2, 2, 0)
    assert "row 7 has no date (attempt 2)" in parse.message
    assert code == 0, err
    assert "==> parse attempt 1 stderr <==" in out
    assert "==> parse attempt 2 stderr <==" in out
    assert out.count("Traceback (most recent call last)") == 2
    assert "ValueError: row 7 has no date (attempt 2)" in out


async def test_each_attempt_is_told_its_run_task_attempt_and_node(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        from strata.sdk.workflows import task_context

        flow = Workflow("{name}")


        @flow.task(retry=Retry(attempts=2, backoff=timedelta(0)))
        def told():
            context = task_context()
            told = (context.run_id, context.workflow, context.task_id, context.attempt)
            mark("told", " ".join(map(str, (*told, context.node_id))))
            if context.attempt == 1:
                raise RuntimeError("the first attempt fails, so a retry is told attempt 2")
            return {}
        """,
    )
    await apply(project, scheduler)
    run_id = await trigger(scheduler, project.name)
    run = await until(scheduler, run_id, state="SUCCEEDED")

    told = task_of(run, "told")
    assert told.attempt == 2
    assert project.lines_of("told") == [
        f"{run_id} {project.name} told 1 {told.node_id}",
        f"{run_id} {project.name} told 2 {told.node_id}",
    ]


async def test_a_task_over_its_memory_limit_is_reported_out_of_memory(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}")


        @flow.task(memory="256Mi")
        def hoard():
            held = b"x" * (768 * 1024 * 1024)
            mark("hoard")
            time.sleep(60)
            return {"held": len(held)}
        """,
    )
    await apply(project, scheduler)
    run_id = await trigger(scheduler, project.name)
    await until(scheduler, run_id, state="FAILED")
    code, out, err = await strata("workflow", "status", run_id, scheduler=scheduler, cwd=tmp_path)

    assert code == 0, err
    rows = [line for line in out.splitlines() if " hoard " in line]
    assert "FAILED" in rows[0], out
    assert "OUT_OF_MEMORY" in out, out


async def test_cancelling_a_run_stops_its_running_attempt(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}")


        @flow.task()
        def crunch():
            mark("crunch", str(os.getpid()))
            time.sleep(600)
            return {}
        """,
    )
    await apply(project, scheduler)
    run_id = await trigger(scheduler, project.name)
    pid = await _first_line(project, "crunch")
    code, _, err = await strata("workflow", "cancel", run_id, scheduler=scheduler, cwd=tmp_path)
    assert code == 0, err
    run = await until(scheduler, run_id, state="CANCELLED")

    assert states(run)["crunch"] == "CANCELLED"
    await _gone(int(pid))


async def test_a_task_larger_than_every_node_waits_saying_why_and_runs_on_a_bigger_agent(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}")


        @flow.task(cpu=2)
        def train():
            mark("train")
            return {}
        """,
    )
    await apply(project, scheduler)
    run_id = await trigger(scheduler, project.name)
    row = await _waiting_row(scheduler, cluster, run_id, "train", tmp_path)
    assert "waiting for a node: needs 2" in row
    assert "the largest node has 1" in row

    bigger = await cluster.agent(Capacity(cpu_millis=4000, memory_bytes=2 * GIB))
    run = await until(scheduler, run_id, state="SUCCEEDED")

    assert task_of(run, "train").node_id == bigger.node_id
    assert project.runs_of("train") == 1


async def _waiting_row(
    scheduler: ServiceProcess, cluster: Platform, run_id: str, task: str, cwd: Path
) -> str:
    """The task's row in ``strata workflow status`` once it says why the task waits."""
    async with asyncio.timeout(BOUND):
        while True:
            code, out, err = await strata(
                "workflow",
                "status",
                run_id,
                scheduler=scheduler,
                provisioner=cluster.provisioner,
                cwd=cwd,
            )
            assert code == 0, err
            rows = [line for line in out.splitlines() if f" {task} " in line]
            if rows and "waiting for a node" in rows[0]:
                return rows[0]
            await asyncio.sleep(0.5)


async def _first_line(project: Project, task: str) -> str:
    """The first line ``task`` marked, once it has."""
    async with asyncio.timeout(BOUND):
        while True:
            if lines := project.lines_of(task):
                return lines[0]
            await asyncio.sleep(0.1)


async def _gone(pid: int) -> None:
    """Until process ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    async with asyncio.timeout(BOUND):
        while True:
            if not _running(pid):
                return
            await asyncio.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"
