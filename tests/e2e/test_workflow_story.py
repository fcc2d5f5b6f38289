"""A team's workflow, as they would run it: declared with the SDK, applied with the CLI,
run by the real scheduler, provisioner and agent, surviving a scheduler crash.

The workflow (``story_<id>.py``, written to the folder that is the agent's code
path): ``extract`` feeds ``clean`` and ``profile`` in parallel, ``check``
joins them, and exactly one of ``publish`` / ``alert`` runs on ``check``'s output.
Every task appends a line to a file of its own: the side effect whose count says
how often the task really ran.
"""

from __future__ import annotations

import signal
import textwrap
import uuid
from pathlib import Path

import pytest
from service_processes import running

from tests.e2e.workflow_cluster import Platform, Project, apply, states, trigger, until

pytestmark = pytest.mark.integration

STORY = """
import pathlib
import time

from strata.sdk.workflows import Workflow

story = Workflow("{name}")


def _mark(marks: str, task: str) -> None:
    with open(pathlib.Path(marks) / task, "a") as sink:
        sink.write("ran\\n")


@story.task(args={{"marks": "{marks}", "rows": 120}})
def extract(marks, rows):
    _mark(marks, "extract")
    return {{"rows": rows}}


@story.task(depends_on=[extract], args={{"marks": "{marks}", "pause": {pause}}})
def clean(marks, pause, extract):
    time.sleep(pause)
    _mark(marks, "clean")
    return {{"rows": extract["rows"] - 20}}


@story.task(depends_on=[extract], args={{"marks": "{marks}"}})
def profile(marks, extract):
    _mark(marks, "profile")
    return {{"columns": 7}}


@story.task(depends_on=[clean, profile], args={{"marks": "{marks}"}})
def check(marks, clean, profile):
    _mark(marks, "check")
    return {{"good": clean["rows"] >= 100 and profile["columns"] > 0}}


@story.task(depends_on=[check], condition="outputs.check.good", args={{"marks": "{marks}"}})
def publish(marks):
    _mark(marks, "publish")
    return {{}}


@story.task(depends_on=[check], condition="!outputs.check.good", args={{"marks": "{marks}"}})
def alert(marks):
    _mark(marks, "alert")
    return {{}}
"""
TASKS = ("extract", "clean", "profile", "check", "publish", "alert")


@pytest.fixture
def project(cluster: Platform, tmp_path: Path, request: pytest.FixtureRequest) -> Project:
    """A workflow file of its own in the project folder (a module name per test)."""
    pause = getattr(request, "param", 0.0)
    name = f"story_{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks"
    marks.mkdir()
    story = STORY.format(name=name.replace("_", "-"), marks=marks, pause=pause)
    file = cluster.code / f"{name}.py"
    file.write_text(textwrap.dedent(story))
    return Project(file, name.replace("_", "-"), marks)


async def test_the_story_runs_to_success_with_the_branch_not_taken_skipped(
    cluster: Platform, project: Project, tmp_path: Path
) -> None:
    async with running("scheduler", tmp_path) as scheduler:
        await apply(project, scheduler)
        run_id = await trigger(scheduler, project.name)
        run = await until(scheduler, run_id, task="", state="SUCCEEDED")

    assert states(run) == {
        "extract": "SUCCEEDED",
        "clean": "SUCCEEDED",
        "profile": "SUCCEEDED",
        "check": "SUCCEEDED",
        "publish": "SUCCEEDED",
        "alert": "SKIPPED",
    }
    assert {t.task_id: t.node_id for t in run.tasks if t.node_id} == dict.fromkeys(
        ["extract", "clean", "profile", "check", "publish"], cluster.agents[0].node_id
    )
    assert {task: project.runs_of(task) for task in TASKS} == {
        **dict.fromkeys(TASKS, 1),
        "alert": 0,
    }


@pytest.mark.parametrize("project", [3.0], indirect=True)
async def test_a_scheduler_killed_mid_run_restarts_and_the_run_finishes_with_each_task_run_once(
    cluster: Platform, project: Project, tmp_path: Path
) -> None:
    """SIGKILL while ``clean`` runs: its report arrives while no scheduler is up, the
    restarted one picks it up from Kafka, and no task is requested twice."""
    async with running("scheduler", tmp_path) as scheduler:
        await apply(project, scheduler)
        run_id = await trigger(scheduler, project.name)
        await until(scheduler, run_id, task="clean", state="RUNNING")
        scheduler.process.send_signal(signal.SIGKILL)
        await scheduler.process.wait()
    async with running("scheduler", tmp_path) as restarted:
        run = await until(restarted, run_id, task="", state="SUCCEEDED")

    assert states(run)["alert"] == "SKIPPED"
    assert {task: project.runs_of(task) for task in TASKS} == {
        **dict.fromkeys(TASKS, 1),
        "alert": 0,
    }
    assert all(t.attempt == 1 for t in run.tasks if t.task_id != "alert"), run
