"""The workflow platform as the end-to-end stories run it: real provisioner, agent and
scheduler processes, a team's workflow file (``strata workflow apply`` ships its folder
to the agents as a code bundle), and the calls
and commands a team uses to watch its runs.

``async with platform(folder, code, agents=(SMALL,)) as cluster`` starts a
provisioner and its agents (each with the capacity given, a log folder of its own);
``cluster.agent(...)`` adds one later (a bigger node joining). A story writes its
workflow with :func:`write_workflow` (every task appends a line to a marks file of
its own: the side effect whose count says how often the task really ran), applies
it with ``strata workflow apply`` (:func:`apply`) and follows the run with
:func:`until`. :func:`strata` runs any other command as a person types it.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from service_processes import ServiceProcess, running

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from tests.stack_session import STRATA

BOUND = 120.0
"""Guard against a hang: several processes on a loaded two-core machine."""
ADMIN = (("authorization", "Bearer dev-admin-token"),)
GIB = 1024**3

HEADER = '''
import os
import pathlib
import time
from datetime import timedelta

from strata.sdk.workflows import Cron, DataArrival, Retry, Workflow

MARKS = pathlib.Path("{marks}")


def mark(task, line="ran"):
    """Append ``line`` to the task's marks; return how many lines it has now."""
    with open(MARKS / task, "a") as sink:
        sink.write(line + "\\n")
    return len((MARKS / task).read_text().splitlines())


def wait_for(name):
    """Block until the test creates ``MARKS / name``."""
    while not (MARKS / name).exists():
        time.sleep(0.05)
'''
"""What every story's workflow file starts with: its imports and the marks helpers."""


@dataclass(frozen=True)
class Capacity:
    """What an agent offers to tasks."""

    cpu_millis: int
    memory_bytes: int


SMALL = Capacity(cpu_millis=1000, memory_bytes=2 * GIB)
"""The stories' usual node: one CPU, so a task asking for two fits nowhere."""


@dataclass(frozen=True)
class Agent:
    process: ServiceProcess
    node_id: str


@dataclass
class Platform:
    """A provisioner, its agents, and the folder the stories write workflow files into."""

    provisioner: ServiceProcess
    code: Path
    folder: Path
    agent_env: Mapping[str, str] = field(default_factory=dict)
    """Settings every agent of the platform starts with."""
    agents: list[Agent] = field(default_factory=list)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def agent(self, capacity: Capacity = SMALL) -> Agent:
        """Start one more agent (stopped with the platform) and wait until it serves."""
        node_id = f"e2e-node-{uuid.uuid4().hex[:6]}"
        logs = self.folder / node_id
        logs.mkdir()
        env = {
            "STRATA_AGENT_PROVISIONER": self.provisioner.address,
            "STRATA_AGENT_NODE_ID": node_id,
            "STRATA_AGENT_CPU_MILLIS": str(capacity.cpu_millis),
            "STRATA_AGENT_MEMORY_BYTES": str(capacity.memory_bytes),
            **self.agent_env,
        }
        process = await self._stack.enter_async_context(running("agent", logs, **env))
        started = Agent(process, node_id)
        self.agents.append(started)
        return started


@asynccontextmanager
async def platform(
    folder: Path,
    code: Path,
    agents: tuple[Capacity, ...] = (SMALL,),
    agent_env: Mapping[str, str] | None = None,
    **provisioner_env: str,
) -> AsyncIterator[Platform]:
    """A provisioner (with ``provisioner_env`` added) and one agent per capacity (with
    ``agent_env`` added)."""
    async with running("provisioner", folder, **provisioner_env) as provisioner:
        cluster = Platform(provisioner, code, folder, dict(agent_env or {}))
        async with cluster._stack:
            for capacity in agents:
                await cluster.agent(capacity)
            yield cluster


@dataclass(frozen=True)
class Project:
    """A team's workflow file, and where its tasks leave their marks."""

    file: Path
    name: str
    marks: Path

    def runs_of(self, task: str) -> int:
        return len(self.lines_of(task))

    def lines_of(self, task: str) -> list[str]:
        mark = self.marks / task
        return mark.read_text().splitlines() if mark.exists() else []

    def release(self, name: str) -> None:
        """Let a task blocked in ``wait_for(name)`` go on."""
        (self.marks / name).touch()


def write_workflow(code: Path, marks: Path, tasks: str) -> Project:
    """A workflow file of its own (a module name no other story uses) in the project folder.

    ``tasks`` declares ``flow = Workflow(NAME, ...)`` and its tasks, after
    :data:`HEADER`; ``{name}`` in it is the workflow's name, ``{marks}`` the marks folder.
    """
    module = f"flow_{uuid.uuid4().hex[:8]}"
    name = module.replace("_", "-")
    marks.mkdir(parents=True, exist_ok=True)
    source = textwrap.dedent(HEADER) + textwrap.dedent(tasks)
    file = code / f"{module}.py"
    file.write_text(source.replace("{name}", name).replace("{marks}", str(marks)))
    return Project(file, name, marks)


async def strata(
    *args: str, scheduler: ServiceProcess, provisioner: ServiceProcess | None = None, cwd: Path
) -> tuple[int, str, str]:
    """``strata ARGS`` as a person runs it in ``cwd``: exit code, stdout, stderr."""
    env = {
        **os.environ,
        "STRATA_SERVICE_SCHEDULER_PORT": scheduler.address.rsplit(":", 1)[1],
        "COLUMNS": "250",
    }
    if provisioner is not None:
        env["STRATA_SERVICE_PROVISIONER_PORT"] = provisioner.address.rsplit(":", 1)[1]
    process = await asyncio.create_subprocess_exec(
        STRATA,
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def apply(project: Project, scheduler: ServiceProcess) -> None:
    """``strata workflow apply flow_<id>.py`` as the team types it, in its folder."""
    code, _, err = await strata(
        "workflow", "apply", project.file.name, scheduler=scheduler, cwd=project.file.parent
    )
    assert code == 0, err


@asynccontextmanager
async def scheduler_stub(scheduler: ServiceProcess) -> AsyncIterator[SchedulerServiceStub]:
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        yield SchedulerServiceStub(channel)


async def trigger(scheduler: ServiceProcess, name: str) -> str:
    """A run of workflow ``name`` started by hand; its id."""
    async with scheduler_stub(scheduler) as stub:
        reply = await stub.TriggerRun(
            pb.TriggerRunRequest(workflow_name=name, request_id=uuid.uuid4().hex), metadata=ADMIN
        )
    return str(reply.run.run_id)


async def pause(scheduler: ServiceProcess, name: str) -> None:
    """Pause workflow ``name``'s schedule: a scheduler on the real clock, later in the
    session, would otherwise run the ticks from the test's clock to now."""
    async with scheduler_stub(scheduler) as stub:
        current = await stub.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=ADMIN)
        await stub.ApplyWorkflow(
            pb.ApplyWorkflowRequest(spec=current.workflow.spec, paused=True), metadata=ADMIN
        )


async def get_run(scheduler: ServiceProcess, run_id: str) -> pb.Run:
    async with scheduler_stub(scheduler) as stub:
        reply = await stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=ADMIN)
    run: pb.Run = reply.run
    return run


async def until(
    scheduler: ServiceProcess, run_id: str, *, task: str = "", state: str, attempt: int = 0
) -> pb.Run:
    """Poll the run until ``task`` (or the run itself, for task="") is in ``state``, at
    ``attempt`` or a later one when given."""
    async with asyncio.timeout(BOUND):
        while True:
            run = await get_run(scheduler, run_id)
            if task and states(run).get(task) == state and task_of(run, task).attempt >= attempt:
                return run
            if not task and run_state(run) == state:
                return run
            await asyncio.sleep(0.1)


async def runs_of(scheduler: ServiceProcess, name: str, count: int) -> list[pb.Run]:
    """Poll until workflow ``name`` has ``count`` runs; them, oldest first."""
    async with asyncio.timeout(BOUND), scheduler_stub(scheduler) as stub:
        while True:
            reply = await stub.ListRuns(pb.ListRunsRequest(workflow_name=name), metadata=ADMIN)
            if len(reply.runs) >= count:
                return list(reversed(reply.runs))
            await asyncio.sleep(0.1)


def run_state(run: pb.Run) -> str:
    return pb.RunState.Name(run.state).removeprefix("RUN_STATE_")


def states(run: pb.Run) -> dict[str, str]:
    return {t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in run.tasks}


def task_of(run: pb.Run, task_id: str) -> pb.TaskInstance:
    [found] = [t for t in run.tasks if t.task_id == task_id]
    return found
