"""Applying workflows to a real ``python -m strata.scheduler`` over gRPC, stored in Postgres.

What a team relies on: applying the same declaration twice changes nothing, a
changed one becomes the next version while the old one stays readable, and a
workflow that could never run is refused with INVALID_ARGUMENT naming the task,
storing nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from service_processes import running
from strata_cli import run_strata

from strata.api.common.v1.resources_pb2 import Resources
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.rpc.status import field_violations

pytestmark = pytest.mark.integration

TOKENS = {
    "dev-token": {"principal": "alice", "roles": ["developer"]},
    "viewer-token": {"principal": "dashboard", "roles": ["viewer"]},
}


@pytest.fixture(scope="module")
async def scheduler(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A scheduler process; yields its address once it is SERVING."""
    folder = tmp_path_factory.mktemp("scheduler")
    async with running("scheduler", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as service:
        yield service.address


@pytest.fixture
async def client(scheduler: str) -> AsyncIterator[SchedulerServiceStub]:
    async with grpc.aio.insecure_channel(scheduler) as channel:
        yield SchedulerServiceStub(channel)


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


DEV = _as("dev-token")


def _spec(name: str, *extra: pb.TaskSpec) -> pb.WorkflowSpec:
    return pb.WorkflowSpec(
        name=name,
        tasks=[
            pb.TaskSpec(task_id="extract", entrypoint="pipeline.tasks:extract"),
            pb.TaskSpec(
                task_id="train",
                entrypoint="pipeline.tasks:train",
                depends_on=["extract"],
                condition="outputs.extract.rows > 0",
                resources=Resources(cpu_millis=2000, memory_bytes=4 * 2**30),
            ),
            *extra,
        ],
        triggers=[
            pb.Trigger(cron=pb.CronTrigger(expression="0 3 * * *", time_zone="Europe/Paris"))
        ],
    )


def _name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def test_apply_reapply_and_change_make_versions(client: SchedulerServiceStub) -> None:
    name = _name("nightly")
    first = await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=_spec(name)), metadata=DEV)
    again = await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=_spec(name)), metadata=DEV)
    report = pb.TaskSpec(task_id="report", entrypoint="pipeline.tasks:report", depends_on=["train"])
    changed = await client.ApplyWorkflow(
        pb.ApplyWorkflowRequest(spec=_spec(name, report)), metadata=DEV
    )

    assert (first.workflow.version, first.changed) == (1, True)
    assert first.workflow.applied_by == "alice"
    assert first.workflow.spec == _spec(name)
    assert (again.workflow.version, again.changed) == (1, False)
    assert again.workflow.applied_at == first.workflow.applied_at, "a no-op stores nothing"
    assert (changed.workflow.version, changed.changed) == (2, True)
    assert changed.workflow.spec_sha256 != first.workflow.spec_sha256

    current = await client.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=DEV)
    older = await client.GetWorkflow(pb.GetWorkflowRequest(name=name, version=1), metadata=DEV)
    assert current.workflow == changed.workflow
    assert older.workflow.spec == _spec(name), "runs keep the version they started with"


async def test_validate_only_stores_nothing(client: SchedulerServiceStub) -> None:
    name = _name("preview")
    reply = await client.ApplyWorkflow(
        pb.ApplyWorkflowRequest(spec=_spec(name), validate_only=True), metadata=DEV
    )
    assert (reply.workflow.version, reply.changed) == (1, True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=DEV)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages_through_current_versions_by_name(client: SchedulerServiceStub) -> None:
    prefix = _name("listed")
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in reversed(names):
        await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=_spec(name)), metadata=DEV)
    report = pb.TaskSpec(task_id="report", entrypoint="pipeline.tasks:report", depends_on=["train"])
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=_spec(names[1], report)), metadata=DEV)

    seen: list[pb.Workflow] = []
    token = ""
    while True:
        page = await client.ListWorkflows(
            pb.ListWorkflowsRequest(page_size=2, page_token=token), metadata=_as("viewer-token")
        )
        assert len(page.workflows) <= 2
        seen.extend(page.workflows)
        token = page.next_page_token
        if not token:
            break
    ours = [(w.spec.name, w.version) for w in seen if w.spec.name.startswith(prefix)]
    assert ours == [(names[0], 1), (names[1], 2), (names[2], 1)]
    listed = [w.spec.name for w in seen]
    assert listed == sorted(listed)


async def test_an_invalid_workflow_is_refused_naming_the_task_and_nothing_is_stored(
    client: SchedulerServiceStub,
) -> None:
    name = _name("cyclic")
    spec = _spec(name)
    spec.tasks[0].depends_on.append("train")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert list(violations) in (["tasks[extract].depends_on"], ["tasks[train].depends_on"])
    assert "cycle" in next(iter(violations.values()))

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=DEV)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_invalid_change_keeps_the_current_version(client: SchedulerServiceStub) -> None:
    name = _name("oversized")
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=_spec(name)), metadata=DEV)
    spec = _spec(name)
    spec.tasks[1].resources.memory_bytes = 64 * 2**30
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(caught.value)) == ["tasks[train].resources.memory_bytes"]
    current = await client.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=DEV)
    assert current.workflow.version == 1


async def test_a_viewer_reads_workflows_but_cannot_apply_them(client: SchedulerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.ApplyWorkflow(
            pb.ApplyWorkflowRequest(spec=_spec(_name("denied"))), metadata=_as("viewer-token")
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


WORKFLOW_FILE = """
from strata.sdk.workflows import Cron, Workflow

nightly = Workflow("{name}", triggers=[Cron("0 3 * * *", "Europe/Paris")])


@nightly.task(memory="{memory}")
def extract() -> dict[str, int]:
    return {{"rows": 1}}


@nightly.task(depends_on=[extract], condition="outputs.extract.rows > 0")
def train() -> None: ...
"""


async def _strata(scheduler: str, *args: str) -> tuple[int, str, str]:
    """Run the ``strata`` CLI against ``scheduler`` as the developer; exit code, stdout, stderr."""
    env = {
        **os.environ,
        "STRATA_SERVICE_SCHEDULER_PORT": scheduler.rsplit(":", 1)[1],
        "STRATA_AUTH_CLIENT_TOKEN": "dev-token",
        "COLUMNS": "200",
    }
    return await run_strata(*args, env=env)


async def test_the_cli_applies_a_workflow_file_and_lists_it(
    scheduler: str, client: SchedulerServiceStub, tmp_path: Path
) -> None:
    name = _name("cli")
    path = tmp_path / "pipeline.py"
    path.write_text(WORKFLOW_FILE.format(name=name, memory="4Gi"))

    applied = await _strata(scheduler, "workflow", "apply", str(path))
    again = await _strata(scheduler, "workflow", "apply", str(path))
    path.write_text(WORKFLOW_FILE.format(name=name, memory="8Gi"))
    changed = await _strata(scheduler, "workflow", "apply", str(path))
    listed = await _strata(scheduler, "workflow", "list")

    assert applied == (0, f"{name}: is version 1 (changed)\n", "")
    assert again == (0, f"{name}: is version 1 (unchanged)\n", "")
    assert changed == (0, f"{name}: is version 2 (changed)\n", "")
    stored = await client.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=DEV)
    assert [t.entrypoint for t in stored.workflow.spec.tasks] == [
        "pipeline:extract",
        "pipeline:train",
    ]
    assert stored.workflow.spec.tasks[0].resources.memory_bytes == 8 * 2**30
    code, out, _ = listed
    assert code == 0
    row = next(line for line in out.splitlines() if name in line)
    assert "cron 0 3 * * * Europe/Paris" in row
    assert "alice" in row


async def test_the_cli_names_a_refused_task_in_one_line(scheduler: str, tmp_path: Path) -> None:
    name = _name("cli-big")
    path = tmp_path / "pipeline.py"
    path.write_text(WORKFLOW_FILE.format(name=name, memory="64Gi"))

    code, out, err = await _strata(scheduler, "workflow", "apply", str(path))

    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert f"workflow '{name}' refused: tasks[extract].resources.memory_bytes" in err
    assert "Traceback" not in err


async def test_the_cli_names_a_declaration_error_with_its_file(
    scheduler: str, tmp_path: Path
) -> None:
    path = tmp_path / "pipeline.py"
    path.write_text(WORKFLOW_FILE.format(name=_name("cli-bad"), memory="4GB"))

    code, out, err = await _strata(scheduler, "workflow", "apply", str(path))

    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [
        f"{path}: invalid tasks[extract].resources.memory: expected a quantity like "
        "'4Gi' (units: k, M, G, T, Ki, Mi, Gi, Ti), got '4GB'"
    ]
