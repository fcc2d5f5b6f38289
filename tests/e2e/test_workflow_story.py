"""A team's workflow, as they would run it: declared with the SDK, applied with the CLI,
run by the real scheduler, provisioner and agent, surviving a scheduler crash.

The workflow (``story_<id>.py``, written to the folder that is the agent's code
path): ``extract`` feeds ``clean`` and ``profile`` in parallel, ``check``
joins them, and exactly one of ``publish`` / ``alert`` runs on ``check``'s output.
Every task appends a line to a file of its own: the side effect whose count says
how often the task really ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from service_processes import ServiceProcess, running

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from tests.stack_session import STRATA

pytestmark = pytest.mark.integration

BOUND = 120.0
"""Guard against a hang: six processes on a loaded two-core machine."""
ADMIN = (("authorization", "Bearer dev-admin-token"),)

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


@dataclass(frozen=True)
class Project:
    """The team's workflow file, and where its tasks leave their marks."""

    file: Path
    name: str
    marks: Path

    def runs_of(self, task: str) -> int:
        mark = self.marks / task
        return len(mark.read_text().splitlines()) if mark.exists() else 0


@dataclass(frozen=True)
class Platform:
    provisioner: ServiceProcess
    agent: ServiceProcess
    node_id: str
    code: Path
    """The agent's code path, where each test writes its workflow file."""


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    """A provisioner and one agent whose code path is the module's project folder."""
    folder = tmp_path_factory.mktemp("platform")
    code = tmp_path_factory.mktemp("code")
    node_id = f"story-node-{uuid.uuid4().hex[:6]}"
    async with running("provisioner", folder) as provisioner:
        agent_env = {
            "STRATA_AGENT_PROVISIONER": provisioner.address,
            "STRATA_AGENT_NODE_ID": node_id,
            "STRATA_AGENT_CODE_PATH": json.dumps([str(code)]),
        }
        async with running("agent", folder, **agent_env) as agent:
            yield Platform(provisioner, agent, node_id, code)


@pytest.fixture
def project(platform: Platform, tmp_path: Path, request: pytest.FixtureRequest) -> Project:
    """A workflow file of its own on the agent's code path (a module name per test)."""
    pause = getattr(request, "param", 0.0)
    name = f"story_{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks"
    marks.mkdir()
    story = STORY.format(name=name.replace("_", "-"), marks=marks, pause=pause)
    file = platform.code / f"{name}.py"
    file.write_text(textwrap.dedent(story))
    return Project(file, name.replace("_", "-"), marks)


def _apply(project: Project, scheduler: ServiceProcess) -> None:
    """``strata workflow apply story_<id>.py`` as the team types it, in its folder."""
    port = scheduler.address.rsplit(":", 1)[1]
    applied = subprocess.run(
        [STRATA, "workflow", "apply", project.file.name],
        cwd=project.file.parent,
        env={**os.environ, "STRATA_SERVICE_SCHEDULER_PORT": port},
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr


async def _trigger(scheduler: ServiceProcess, name: str) -> str:
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        reply = await SchedulerServiceStub(channel).TriggerRun(
            pb.TriggerRunRequest(workflow_name=name, request_id=uuid.uuid4().hex), metadata=ADMIN
        )
    return str(reply.run.run_id)


async def _run(scheduler: ServiceProcess, run_id: str) -> pb.Run:
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        reply = await SchedulerServiceStub(channel).GetRun(
            pb.GetRunRequest(run_id=run_id), metadata=ADMIN
        )
    run: pb.Run = reply.run
    return run


async def _until(scheduler: ServiceProcess, run_id: str, *, task: str, state: str) -> pb.Run:
    """Poll the run until ``task`` (or the run itself, for task="") is in ``state``."""
    async with asyncio.timeout(BOUND):
        while True:
            run = await _run(scheduler, run_id)
            if (_run_state(run) if not task else _states(run).get(task)) == state:
                return run
            await asyncio.sleep(0.1)


def _run_state(run: pb.Run) -> str:
    return pb.RunState.Name(run.state).removeprefix("RUN_STATE_")


def _states(run: pb.Run) -> dict[str, str]:
    return {t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in run.tasks}


async def test_the_story_runs_to_success_with_the_branch_not_taken_skipped(
    platform: Platform, project: Project, tmp_path: Path
) -> None:
    async with running("scheduler", tmp_path) as scheduler:
        _apply(project, scheduler)
        run_id = await _trigger(scheduler, project.name)
        run = await _until(scheduler, run_id, task="", state="SUCCEEDED")

    assert _states(run) == {
        "extract": "SUCCEEDED",
        "clean": "SUCCEEDED",
        "profile": "SUCCEEDED",
        "check": "SUCCEEDED",
        "publish": "SUCCEEDED",
        "alert": "SKIPPED",
    }
    assert {t.task_id: t.node_id for t in run.tasks if t.node_id} == dict.fromkeys(
        ["extract", "clean", "profile", "check", "publish"], platform.node_id
    )
    assert {task: project.runs_of(task) for task in TASKS} == {
        **dict.fromkeys(TASKS, 1),
        "alert": 0,
    }


@pytest.mark.parametrize("project", [3.0], indirect=True)
async def test_a_scheduler_killed_mid_run_restarts_and_the_run_finishes_with_each_task_run_once(
    platform: Platform, project: Project, tmp_path: Path
) -> None:
    """SIGKILL while ``clean`` runs: its report arrives while no scheduler is up, the
    restarted one picks it up from Kafka, and no task is requested twice."""
    async with running("scheduler", tmp_path) as scheduler:
        _apply(project, scheduler)
        run_id = await _trigger(scheduler, project.name)
        await _until(scheduler, run_id, task="clean", state="RUNNING")
        scheduler.process.send_signal(signal.SIGKILL)
        await scheduler.process.wait()
    async with running("scheduler", tmp_path) as restarted:
        run = await _until(restarted, run_id, task="", state="SUCCEEDED")

    assert _states(run)["alert"] == "SKIPPED"
    assert {task: project.runs_of(task) for task in TASKS} == {
        **dict.fromkeys(TASKS, 1),
        "alert": 0,
    }
    assert all(t.attempt == 1 for t in run.tasks if t.task_id != "alert"), run
