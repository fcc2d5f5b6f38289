"""The ``local`` provider under a real ``python -m strata.provisioner``: agents started when
attempts wait for room, stopped when idle.

The test plays the scheduler (it publishes ``TaskRequested`` and reads
``strata.tasks.events``); the task is a code bundle in the stack's S3. What users
rely on: with node classes configured and no node of a class, an attempt that
only that class can hold makes the provisioner start an agent of that class
(its capacity, its node id, its log under the provider's folder), and the attempt
runs on it; once the node has been idle for ``idle_after`` it is drained and its
process stopped, while a class's min nodes stay however idle; an agent process that
dies is a lost node at once (not a lease later) and the retried attempt gets a new
node; a node class larger than the local budget refuses the start, naming the class.

The classes ask for a fake GPU: no other test's attempt fits them, so nothing else
lands on these nodes or makes the fleet start one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import grpc
import psutil
import pytest
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from service_processes import ServiceProcess, running

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.blobs import open_blob_store
from strata.core.bus import Bus
from strata.core.settings import BlobSettings, KafkaSettings, load
from strata.core.topics import TASKS_EVENTS
from strata.sdk.workflows.bundle import Bundle, pack, reference, store

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {
    "agent-token": {"principal": "agent-1", "roles": ["agent"]},
    "viewer-token": {"principal": "bob", "roles": ["viewer"]},
}
VIEWER = (("authorization", "Bearer viewer-token"),)
MIB = 1024**2
GIB = 1024**3
S3 = BlobSettings(backend="s3")
M = TypeVar("M", bound=Message)
NODE_CLASSES = {
    "gpu": {"provider": "local", "cpu": "500m", "memory": "1Gi", "gpu": 1, "max": 2},
    "warm": {"provider": "local", "cpu": "250m", "memory": "512Mi", "gpu": 1, "min": 1, "max": 1},
}
"""``gpu`` starts from none; ``warm`` keeps its one node. Only ``gpu`` holds the test's
attempt: it asks for more memory than ``warm`` has."""
BUDGET = {
    "STRATA_PROVISIONER_LOCAL_CPU_MILLIS": "2000",
    "STRATA_PROVISIONER_LOCAL_MEMORY_BYTES": str(4 * GIB),
    "STRATA_PROVISIONER_LOCAL_GPUS": "3",
}


def _packed_tasks() -> Bundle:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "local_provider_tasks.py").write_text(
            textwrap.dedent(
                """
                import os
                import time

                def where():
                    return {"node_id": os.environ.get("STRATA_AGENT_NODE_ID", "")}

                def hold(seconds):
                    time.sleep(seconds)
                """
            )
        )
        return pack(Path(folder))


TASKS_BUNDLE = _packed_tasks()


@pytest.fixture(scope="module", autouse=True)
async def tasks_bundle() -> None:
    async with open_blob_store(S3) as blobs:
        await store(TASKS_BUNDLE, blobs, S3)


@pytest.fixture
def lease() -> str:
    """The provisioner's lease (its default unless a test says otherwise)."""
    return "PT15S"


@pytest.fixture
async def provisioner(tmp_path: Path, lease: str) -> AsyncIterator[ServiceProcess]:
    async with running(
        "provisioner",
        tmp_path,
        STRATA_AUTH_TOKENS=json.dumps(TOKENS),
        STRATA_PROVISIONER_LEASE=lease,
        STRATA_PROVISIONER_NODE_CLASSES=json.dumps(NODE_CLASSES),
        STRATA_PROVISIONER_IDLE_AFTER="PT2S",
        STRATA_PROVISIONER_FLEET_POLL="0.3",
        STRATA_PROVISIONER_LOCAL_STATE_DIR=str(tmp_path / "local"),
        STRATA_PROVISIONER_LOCAL_AGENT_ENV=json.dumps(
            {
                "STRATA_AUTH_CLIENT_TOKEN": "agent-token",
                "STRATA_BLOB_BACKEND": "s3",
                "STRATA_AGENT_RECONNECT_MAX": "1",
                "STRATA_AGENT_SPARE_WORKERS": "0",
            }
        ),
        **BUDGET,
    ) as process:
        yield process


@pytest.fixture
async def heard() -> AsyncIterator[tuple[Bus, asyncio.Queue[Message]]]:
    bus = Bus("local-provider-test", kafka=load(KafkaSettings))
    events: asyncio.Queue[Message] = asyncio.Queue()
    consumer = bus.consumer(TASKS_EVENTS, group=f"local-provider-{uuid.uuid4().hex[:8]}")

    async def on_event(event: Message, envelope: Envelope) -> None:
        events.put_nowait(event)

    for kind in (pb.TaskStarted, pb.TaskFinished, pb.TaskFailed, pb.TaskLost):
        consumer.handle(kind, on_event)
    async with bus:
        yield bus, events


async def _classes(stub: ProvisionerServiceStub) -> dict[str, pb.NodeClass]:
    reply = await stub.ListNodeClasses(pb.ListNodeClassesRequest(), metadata=VIEWER)
    return {c.name: c for c in reply.node_classes}


def _agents(provisioner: ServiceProcess) -> dict[str, int]:
    """The agent processes the provisioner runs now: node id -> pid."""
    agents = {}
    for child in psutil.Process(provisioner.process.pid).children():
        try:
            node_id = child.environ().get("STRATA_AGENT_NODE_ID")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if node_id and child.status() != psutil.STATUS_ZOMBIE:
            agents[node_id] = child.pid
    return agents


async def test_an_agent_is_started_for_a_waiting_attempt_and_stopped_once_idle(
    provisioner: ServiceProcess, heard: tuple[Bus, asyncio.Queue[Message]], tmp_path: Path
) -> None:
    bus, events = heard
    async with grpc.aio.insecure_channel(provisioner.address) as channel:
        stub = ProvisionerServiceStub(channel)

        # No node of "gpu" at start; "warm" is brought to its min of one.
        classes = await _classes(stub)
        assert (classes["gpu"].starting, classes["gpu"].connected) == (0, 0)
        assert classes["gpu"].capacity == Resources(cpu_millis=500, memory_bytes=GIB, gpus=1)
        async with asyncio.timeout(BOUND):
            while (await _classes(stub))["warm"].connected != 1:  # noqa: ASYNC110 - polls a server
                await asyncio.sleep(0.1)
        assert not [n for n in _agents(provisioner) if n.startswith("gpu-")]

        # An attempt only "gpu" can hold waits, a gpu agent starts, and the attempt runs there.
        request = TaskRequested(
            attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id="where", attempt=1),
            workflow_name="local-provider",
            entrypoint="local_provider_tasks:where",
            bundle=reference(TASKS_BUNDLE, S3),
            resources=Resources(cpu_millis=100, memory_bytes=768 * MIB, gpus=1),
            queue=f"q-{uuid.uuid4().hex[:8]}",
        )
        await bus.publish(request)
        async with asyncio.timeout(BOUND):
            while True:
                event = await events.get()
                if getattr(event, "attempt", None) != request.attempt:
                    continue
                if isinstance(event, pb.TaskStarted):
                    node_id = event.node_id
                if isinstance(event, pb.TaskFinished | pb.TaskFailed):
                    break
        assert isinstance(event, pb.TaskFinished), event
        assert node_id.startswith("gpu-")
        assert event.outputs["node_id"] == node_id, "the agent registered with its node id"
        node = (await stub.GetNode(pb.GetNodeRequest(node_id=node_id), metadata=VIEWER)).node
        assert node.capacity == Resources(cpu_millis=500, memory_bytes=GIB, gpus=1)
        assert (tmp_path / "local" / f"{node_id}.log").exists()

        # Idle past idle_after: drained and its process stopped; "warm" keeps its min.
        async with asyncio.timeout(BOUND):
            while node_id in _agents(provisioner):  # noqa: ASYNC110 - polls the processes
                await asyncio.sleep(0.1)
        async with asyncio.timeout(BOUND):
            while True:
                classes = await _classes(stub)
                if (classes["gpu"].starting, classes["gpu"].connected) == (0, 0):
                    break
                await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.GetNode(pb.GetNodeRequest(node_id=node_id), metadata=VIEWER)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert classes["warm"].connected == 1
        assert [n for n in _agents(provisioner) if n.startswith("warm-")]


@pytest.mark.parametrize("lease", ["PT10M"])
async def test_an_agent_process_that_dies_is_a_lost_node_at_once_and_the_retry_gets_another(
    provisioner: ServiceProcess, heard: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, events = heard
    arguments = Struct()
    arguments.update({"seconds": 300})
    request = TaskRequested(
        attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id="hold", attempt=1),
        workflow_name="local-provider",
        entrypoint="local_provider_tasks:hold",
        bundle=reference(TASKS_BUNDLE, S3),
        args=arguments,
        resources=Resources(cpu_millis=100, memory_bytes=768 * MIB, gpus=1),
        queue=f"q-{uuid.uuid4().hex[:8]}",
    )
    await bus.publish(request)
    started = await _next(events, request.attempt, pb.TaskStarted)
    os.kill(_agents(provisioner)[started.node_id], signal.SIGKILL)

    # Lost now, though the lease (10 minutes) is far from over: the provider saw it go.
    lost = await _next(events, request.attempt, pb.TaskLost)
    assert lost.node_id == started.node_id
    assert f"node {started.node_id} is gone" in lost.reason, lost.reason
    assert "exited with code -9" in lost.reason, lost.reason

    # The scheduler's retry: the fleet starts another node for it, and it runs there.
    retry = TaskRequested()
    retry.CopyFrom(request)
    retry.attempt.attempt = 2
    await bus.publish(retry)
    again = await _next(events, retry.attempt, pb.TaskStarted)
    assert again.node_id.startswith("gpu-")
    assert again.node_id != started.node_id


async def _next(events: asyncio.Queue[Message], attempt: TaskAttemptRef, kind: type[M]) -> M:
    """The first event of ``kind`` about ``attempt``; others are passed over."""
    async with asyncio.timeout(BOUND):
        while True:
            event = await events.get()
            if isinstance(event, kind) and getattr(event, "attempt", None) == attempt:
                return event


async def test_a_class_larger_than_the_local_budget_refuses_the_start_naming_it(
    tmp_path: Path,
) -> None:
    too_big = {"huge": {"provider": "local", "cpu": "64", "memory": "1Gi"}}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strata.provisioner",
        env={
            **os.environ,
            "STRATA_PROVISIONER_NODE_CLASSES": json.dumps(too_big),
            "STRATA_PROVISIONER_LOCAL_STATE_DIR": str(tmp_path),
            **BUDGET,
        },
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "node class 'huge'" in stderr.decode()
    assert "larger than provider 'local'" in stderr.decode()
