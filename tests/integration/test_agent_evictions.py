"""Eviction under node memory pressure, end to end: a real ``python -m strata.scheduler``,
``python -m strata.provisioner`` and ``python -m strata.agent`` (offering 1 GiB) over
the real Kafka, Postgres and S3.

Placement reserves what a task's past attempts held, so two tasks that used little
before share the node although each may grow to most of it. What users rely on:
when they grow together past the node's memory (less the agent's margin), exactly
one attempt is evicted, the one furthest above its reservation, reported
FAILURE_KIND_EVICTED; it is retried (on the same limit) and succeeds although its
retry policy allows a single attempt, since an eviction spends no retry; the retry
reserves at least what the evicted attempt held (a run once evicted reserves peaks,
so its retry is not evicted at the same peak again); the other runs on untouched;
``strata workflow status`` shows the eviction.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from service_processes import free_port, running
from strata_cli import run_strata
from test_provisioner_sizing import Heard

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.blobs import open_blob_store
from strata.core.bus import Bus
from strata.core.settings import BlobSettings, KafkaSettings, load
from strata.core.topics import TASKS_EVENTS
from strata.sdk.workflows.bundle import Bundle, pack, reference, store

pytestmark = pytest.mark.integration

BOUND = 90.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {
    "agent-token": {"principal": "agent-1", "roles": ["agent"]},
    "dev-token": {"principal": "alice", "roles": ["developer"]},
}
DEV = (("authorization", "Bearer dev-token"),)
MIB = 1024**2
NODE_MEMORY = 1024 * MIB
"""What the agent offers attempts (STRATA_AGENT_MEMORY_BYTES): they never hold more."""
NODE_CPU = 4000
ASKED = Resources(cpu_millis=1000, memory_bytes=768 * MIB)
"""Either alone fits the node's memory; both at their limits would not."""
GROW_MIB = {"a": 680, "b": 400}
"""Together past 1 GiB, either alone within it; a is further above its reservation."""

TASKS = '''
import pathlib
import time

MIB = 1024 * 1024


def _wait(path):
    while not path.exists():
        time.sleep(0.05)


def grow(me, marks="", sizes=None):
    """Hold little; with a size, once told (<me>-grow, taken) hold that much more and
    say so (<me>-holds), until <me>-release."""
    mib = int((sizes or {}).get(me, 0))
    if not mib:
        time.sleep(0.5)
        return {"held_mib": 0}
    folder = pathlib.Path(marks)
    _wait(folder / f"{me}-grow")
    (folder / f"{me}-grow").unlink()
    held = [b"x" * MIB for _ in range(mib)]
    (folder / f"{me}-holds").touch()
    _wait(folder / f"{me}-release")
    return {"held_mib": len(held)}
'''
S3 = BlobSettings(backend="s3")


def _packed() -> Bundle:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "eviction_test_tasks.py").write_text(textwrap.dedent(TASKS))
        return pack(Path(folder))


BUNDLE = _packed()


@dataclass(frozen=True)
class Platform:
    scheduler: str
    provisioner: str
    node_id: str


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    """A scheduler, a provisioner and one agent offering 1 GiB."""
    async with open_blob_store(S3) as blobs:
        await store(BUNDLE, blobs, S3)
    folder = tmp_path_factory.mktemp("evictions")
    port = free_port()
    node_id = f"evictions-{uuid.uuid4().hex[:8]}"
    tokens = json.dumps(TOKENS)
    agent_env = {
        "STRATA_AUTH_TOKENS": tokens,
        "STRATA_AGENT_PROVISIONER": f"127.0.0.1:{port}",
        "STRATA_AGENT_NODE_ID": node_id,
        "STRATA_AGENT_CPU_MILLIS": str(NODE_CPU),
        "STRATA_AGENT_MEMORY_BYTES": str(NODE_MEMORY),
        "STRATA_AGENT_STATE_DIR": str(folder / "agent-state"),
        "STRATA_AGENT_RECONNECT_MAX": "1",
        "STRATA_BLOB_BACKEND": "s3",
        "STRATA_AUTH_CLIENT_TOKEN": "agent-token",
    }
    async with (
        running("scheduler", folder, STRATA_AUTH_TOKENS=tokens) as scheduler,
        running(
            "provisioner",
            folder,
            STRATA_AUTH_TOKENS=tokens,
            STRATA_SERVICE_PROVISIONER_PORT=str(port),
        ) as provisioner,
        running("agent", folder, **agent_env),
    ):
        await _only_ready(provisioner.address, node_id)
        yield Platform(scheduler.address, provisioner.address, node_id)


async def _only_ready(provisioner: str, node_id: str) -> None:
    """Wait until ``node_id`` is the one READY node: nodes of agents other modules
    stopped stay READY until their lease runs out, and nothing must be placed there."""
    ready = prov.ListNodesResponse()
    async with grpc.aio.insecure_channel(provisioner) as channel:
        stub = ProvisionerServiceStub(channel)
        try:
            async with asyncio.timeout(BOUND):
                while True:
                    ready = await stub.ListNodes(
                        prov.ListNodesRequest(states=[prov.NODE_STATE_READY]), metadata=DEV
                    )
                    if [n.node_id for n in ready.nodes] == [node_id]:
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"other nodes stay READY: {ready}") from None


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[SchedulerServiceStub]:
    async with grpc.aio.insecure_channel(platform.scheduler) as channel:
        yield SchedulerServiceStub(channel)


@pytest.fixture
async def heard(platform: Platform) -> AsyncIterator[Heard]:
    """What the agent reports on ``strata.tasks.events``."""
    bus = Bus("evictions-test", kafka=load(KafkaSettings))
    heard = Heard()
    consumer = bus.consumer(TASKS_EVENTS, group=f"evictions-test-{uuid.uuid4().hex[:8]}")

    async def on_event(event: Message, envelope: Envelope) -> None:
        heard.add(event)

    for kind in (prov.TaskPlaced, prov.TaskFinished, prov.TaskFailed):
        consumer.handle(kind, on_event)
    async with bus:
        yield heard


def _spec(name: str) -> pb.WorkflowSpec:
    """Tasks a and b side by side, each allowed a single attempt."""
    tasks = []
    for me in ("a", "b"):
        args = Struct()
        args.update({"me": me})
        tasks.append(
            pb.TaskSpec(
                task_id=me,
                entrypoint="eviction_test_tasks:grow",
                args=args,
                resources=ASKED,
                retry=pb.RetryPolicy(max_attempts=1, initial_backoff=Duration(seconds=1)),
            )
        )
    return pb.WorkflowSpec(
        name=name, tasks=tasks, bundle=reference(BUNDLE, S3), queue=f"q-{name[-8:]}"
    )


async def _trigger(client: SchedulerServiceStub, name: str, **params: Any) -> str:
    values = Struct()
    values.update(params)
    reply = await client.TriggerRun(
        pb.TriggerRunRequest(workflow_name=name, params=values), metadata=DEV
    )
    return str(reply.run.run_id)


async def _run_when(
    client: SchedulerServiceStub, run_id: str, holds: Callable[[pb.Run], bool], what: str
) -> pb.Run:
    """Poll GetRun until ``holds(run)``."""
    run = pb.Run()
    try:
        async with asyncio.timeout(BOUND):
            while True:
                reply: pb.GetRunResponse = await client.GetRun(
                    pb.GetRunRequest(run_id=run_id), metadata=DEV
                )
                run = reply.run
                if holds(run):
                    return run
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"run never {what}: {run}") from None


def _task(run: pb.Run, task_id: str) -> pb.TaskInstance:
    return next(t for t in run.tasks if t.task_id == task_id)


async def _until_exists(path: Path) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            if await asyncio.to_thread(path.exists):
                return
            await asyncio.sleep(0.05)


def _ref(run_id: str, task_id: str, attempt: int) -> TaskAttemptRef:
    return TaskAttemptRef(run_id=run_id, task_id=task_id, attempt=attempt)


async def test_attempts_growing_together_past_the_node_evict_the_one_furthest_above(
    client: SchedulerServiceStub, heard: Heard, platform: Platform, tmp_path: Path
) -> None:
    name = f"evictions-{uuid.uuid4().hex[:8]}"
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=_spec(name)), metadata=DEV)
    # Three runs holding little: placement learns to reserve little for a and b.
    for run_id in [await _trigger(client, name) for _ in range(3)]:
        await _run_when(
            client, run_id, lambda r: r.state == pb.RUN_STATE_SUCCEEDED, "succeeded (history)"
        )

    run_id = await _trigger(client, name, marks=str(tmp_path), sizes=GROW_MIB)
    both_running = await _run_when(
        client,
        run_id,
        lambda r: all(t.state == pb.TASK_STATE_RUNNING for t in r.tasks),
        "ran a and b together",
    )
    for me in ("a", "b"):
        task = _task(both_running, me)
        assert task.node_id == platform.node_id
        assert task.reserved.memory_bytes < ASKED.memory_bytes // 4, task
    (tmp_path / "b-grow").touch()
    await _until_exists(tmp_path / "b-holds")
    (tmp_path / "a-grow").touch()

    placed, evicted = await heard.ended(_ref(run_id, "a", 1))
    assert isinstance(evicted, prov.TaskFailed), evicted
    assert evicted.kind == prov.FAILURE_KIND_EVICTED, evicted
    assert evicted.message.startswith("node memory pressure: "), evicted.message
    # Stopped on the way up, far above its reservation, never at its own limit.
    assert evicted.peak_usage.memory_bytes > placed.reserved.memory_bytes + GROW_MIB["b"] * MIB
    assert evicted.peak_usage.memory_bytes < placed.limits.memory_bytes

    retried = await _run_when(
        client, run_id, lambda r: _task(r, "a").evictions == 1, "counted a's eviction"
    )
    b = _task(retried, "b")
    assert (b.state, b.attempt, b.evictions) == (pb.TASK_STATE_RUNNING, 1, 0)

    (tmp_path / "a-release").touch()
    (tmp_path / "b-release").touch()
    await _run_when(
        client, run_id, lambda r: _task(r, "b").state == pb.TASK_STATE_SUCCEEDED, "finished b"
    )
    (tmp_path / "a-grow").touch()  # a's retry grows alone
    done = await _run_when(client, run_id, lambda r: r.state == pb.RUN_STATE_SUCCEEDED, "succeeded")
    a, b = _task(done, "a"), _task(done, "b")
    assert (a.state, a.attempt, a.evictions) == (pb.TASK_STATE_SUCCEEDED, 2, 1)
    assert a.limits == ASKED  # an eviction does not raise the limit
    retry_placed, _ = await heard.ended(_ref(run_id, "a", 2))
    assert retry_placed.reserved.memory_bytes >= evicted.peak_usage.memory_bytes, retry_placed
    assert (b.state, b.attempt, b.evictions) == (pb.TASK_STATE_SUCCEEDED, 1, 0)
    _, b_ended = await heard.ended(_ref(run_id, "b", 1))
    assert isinstance(b_ended, prov.TaskFinished), b_ended
    assert b_ended.outputs["held_mib"] == GROW_MIB["b"]

    code, out, err = await run_strata(
        "workflow",
        "status",
        run_id,
        env={
            **os.environ,
            "STRATA_SERVICE_SCHEDULER_PORT": platform.scheduler.rsplit(":", 1)[1],
            "STRATA_SERVICE_PROVISIONER_PORT": platform.provisioner.rsplit(":", 1)[1],
            "STRATA_AUTH_CLIENT_TOKEN": "dev-token",
            "COLUMNS": "200",
        },
    )
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.strip("│┃ ").startswith("a "))
    assert "2 (1 evicted)" in row, out
