"""Usage-aware sizing on a real ``python -m strata.provisioner`` with a real
``python -m strata.agent`` running what it assigns.

The test plays the scheduler: it publishes ``TaskRequested`` (and, after a
failure, the next attempt, as the scheduler's retry does) and reads
``strata.tasks.events``. The agent measures each attempt and enforces its
memory limit. What users rely on: an attempt stopped for going past its memory
is retried with more (and succeeds), the request staying what was asked; a task
whose past attempts used a third of what it asks is placed on its measured need,
its request staying the hard limit. The provisioner reserves past peaks here
(``STRATA_PROVISIONER_RESERVE_MEMORY_FROM=peak``); the default, means, is
test_provisioner_sizing_means.py's.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from service_processes import free_port, running

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
GIB = 1024**3
MIB = 1024**2
HUGE = 10**12 + 7
"""CPU millicores no other test's node has: only this module's agent takes its tasks."""
M = TypeVar("M", bound=Message)

TASKS = """
import pathlib
import time


def grab(mib, marker=None):
    # Hold the memory a while (the agent samples it every 0.1 s), or until the marker exists.
    held = [b"x" * (1024 * 1024) for _ in range(int(mib))]
    time.sleep(0.5)
    while marker is not None and not pathlib.Path(marker).exists():
        time.sleep(0.05)
    return {"held_mib": len(held)}


def burst(base_mib, peak_mib):
    # Hold a little for 2 s, then much more for a moment: a task that peaks briefly.
    held = [b"x" * (1024 * 1024) for _ in range(int(base_mib))]
    time.sleep(2.0)
    held += [b"x" * (1024 * 1024) for _ in range(int(peak_mib))]
    time.sleep(0.3)
    return {"held_mib": len(held)}
"""
S3 = BlobSettings(backend="s3")


def _packed() -> Bundle:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "sizing_test_tasks.py").write_text(textwrap.dedent(TASKS))
        return pack(Path(folder))


BUNDLE = _packed()


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A provisioner reserving peaks, and one agent offering 64 GiB (and more CPU than any
    other node)."""
    async with open_blob_store(S3) as blobs:
        await store(BUNDLE, blobs, S3)
    folder = tmp_path_factory.mktemp("sizing")
    port = free_port()
    node_id = f"sizing-{uuid.uuid4().hex[:8]}"
    tokens = json.dumps(TOKENS)
    agent_env = {
        "STRATA_AUTH_TOKENS": tokens,
        "STRATA_AGENT_PROVISIONER": f"127.0.0.1:{port}",
        "STRATA_AGENT_NODE_ID": node_id,
        "STRATA_AGENT_CPU_MILLIS": str(HUGE),
        "STRATA_AGENT_MEMORY_BYTES": str(64 * GIB),
        "STRATA_AGENT_STATE_DIR": str(folder / "agent-state"),
        "STRATA_AGENT_RECONNECT_MAX": "1",
        "STRATA_BLOB_BACKEND": "s3",
        "STRATA_AUTH_CLIENT_TOKEN": "agent-token",
    }
    async with (
        running(
            "provisioner",
            folder,
            STRATA_AUTH_TOKENS=tokens,
            STRATA_SERVICE_PROVISIONER_PORT=str(port),
            STRATA_PROVISIONER_RESERVE_MEMORY_FROM="peak",
        ) as service,
        running("agent", folder, **agent_env),
    ):
        yield service.address


@pytest.fixture
async def stub(provisioner: str) -> AsyncIterator[ProvisionerServiceStub]:
    async with grpc.aio.insecure_channel(provisioner) as channel:
        yield ProvisionerServiceStub(channel)


class Heard:
    """The events of ``strata.tasks.events`` this test's attempts caused, by attempt."""

    def __init__(self) -> None:
        self._by_attempt: dict[bytes, list[Message]] = {}
        self._changed = asyncio.Event()

    def add(self, event: Message) -> None:
        key = event.attempt.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
        self._by_attempt.setdefault(key, []).append(event)
        self._changed.set()

    async def until(self, attempt: TaskAttemptRef, kind: type[M]) -> list[Message]:
        """The attempt's events up to the first of ``kind``, in the order published."""
        key = attempt.SerializeToString(deterministic=True)
        async with asyncio.timeout(BOUND):
            while True:
                seen = self._by_attempt.get(key, [])
                for i, event in enumerate(seen):
                    if isinstance(event, kind):
                        return list(seen[: i + 1])
                self._changed.clear()
                await self._changed.wait()

    async def ended(self, attempt: TaskAttemptRef) -> tuple[pb.TaskPlaced, Message]:
        """Where the attempt was placed (its limits and reserve), and how it ended."""
        seen = await self.until(attempt, pb.TaskFinished | pb.TaskFailed)  # type: ignore[arg-type]
        placed = [e for e in seen if isinstance(e, pb.TaskPlaced)]
        assert len(placed) == 1, seen
        return placed[0], seen[-1]


@asynccontextmanager
async def task_events(name: str) -> AsyncIterator[tuple[Bus, Heard]]:
    """A bus named ``name`` to publish requests on, and what the provisioner announces of
    the attempts (placed, finished, failed), heard by a consumer group of its own."""
    bus = Bus(name, kafka=load(KafkaSettings))
    heard = Heard()
    consumer = bus.consumer(TASKS_EVENTS, group=f"{name}-{uuid.uuid4().hex[:8]}")

    async def on_event(event: Message, envelope: Envelope) -> None:
        heard.add(event)

    for kind in (pb.TaskPlaced, pb.TaskFinished, pb.TaskFailed):
        consumer.handle(kind, on_event)
    async with bus:
        yield bus, heard


@pytest.fixture
async def events(provisioner: str) -> AsyncIterator[tuple[Bus, Heard]]:
    """The bus to publish requests on, and what this module's provisioner announces."""
    async with task_events("sizing-test") as heard:
        yield heard


def _request(
    workflow: str, memory_bytes: int, args: dict[str, Any], function: str = "grab"
) -> TaskRequested:
    arguments = Struct()
    arguments.update(args)
    return TaskRequested(
        attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id=function, attempt=1),
        workflow_name=workflow,
        entrypoint=f"sizing_test_tasks:{function}",
        bundle=reference(BUNDLE, S3),
        args=arguments,
        resources=Resources(cpu_millis=HUGE - 1, memory_bytes=memory_bytes),
        queue=f"q-{uuid.uuid4().hex[:8]}",
    )


async def test_an_attempt_out_of_memory_is_retried_with_more_and_succeeds(
    events: tuple[Bus, Heard],
) -> None:
    bus, heard = events
    asked = 256 * MIB
    request = _request(f"sizing-{uuid.uuid4().hex[:8]}", asked, {"mib": 320})
    await bus.publish(request)
    placed, failed = await heard.ended(request.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert placed.limits.memory_bytes == asked
    assert failed.kind == pb.FAILURE_KIND_OUT_OF_MEMORY, failed

    # The scheduler retries: the same request, the next attempt number.
    retry = TaskRequested()
    retry.CopyFrom(request)
    retry.attempt.attempt = 2
    await bus.publish(retry)
    placed, finished = await heard.ended(retry.attempt)
    assert placed.limits.memory_bytes == 2 * asked
    assert placed.reserved.memory_bytes <= placed.limits.memory_bytes
    assert isinstance(finished, pb.TaskFinished), finished
    assert finished.peak_usage.memory_bytes > asked


async def test_a_task_that_used_a_third_of_its_request_is_placed_on_its_measured_need(
    stub: ProvisionerServiceStub, events: tuple[Bus, Heard], tmp_path: Path
) -> None:
    bus, heard = events
    workflow = f"sizing-{uuid.uuid4().hex[:8]}"
    asked = 768 * MIB
    past = [_request(workflow, asked, {"mib": 160}) for _ in range(3)]
    for request in past:
        await bus.publish(request)
    peaks = []
    for request in past:
        placed, finished = await heard.ended(request.attempt)
        assert isinstance(finished, pb.TaskFinished), finished
        assert placed.reserved == request.resources  # nothing learned yet: the request
        peaks.append(finished.peak_usage.memory_bytes)
    assert max(peaks) < asked / 2

    marker = tmp_path / "release"
    request = _request(workflow, asked, {"mib": 160, "marker": str(marker)})
    await bus.publish(request)
    (placed_event,) = await heard.until(request.attempt, pb.TaskPlaced)
    assert isinstance(placed_event, pb.TaskPlaced)
    placed = placed_event
    assert placed.limits == request.resources
    assert max(peaks) <= placed.reserved.memory_bytes < asked / 2
    assert placed.reserved.cpu_millis < request.resources.cpu_millis
    node = await stub.GetNode(pb.GetNodeRequest(node_id=placed.node_id), metadata=VIEWER)
    (placement,) = [p for p in node.placements if p.attempt == request.attempt]
    assert placement.reserved == placed.reserved
    assert placement.limits == request.resources
    assert node.node.reserved.memory_bytes == placed.reserved.memory_bytes
    marker.touch()
    _, finished = await heard.ended(request.attempt)
    assert isinstance(finished, pb.TaskFinished), finished


async def _placement(stub: ProvisionerServiceStub, placed: pb.TaskPlaced) -> pb.Placement:
    node: pb.GetNodeResponse = await stub.GetNode(
        pb.GetNodeRequest(node_id=placed.node_id), metadata=VIEWER
    )
    (placement,) = [p for p in node.placements if p.attempt == placed.attempt]
    return placement


async def test_an_attempt_is_expected_to_run_as_long_as_its_task_usually_did(
    stub: ProvisionerServiceStub, events: tuple[Bus, Heard], tmp_path: Path
) -> None:
    bus, heard = events
    workflow = f"timed-{uuid.uuid4().hex[:8]}"
    first_done = tmp_path / "first-done"
    past = [_request(workflow, 256 * MIB, {"mib": 16, "marker": str(first_done)})]
    await bus.publish(past[0])
    (placed,) = await heard.until(past[0].attempt, pb.TaskPlaced)
    assert isinstance(placed, pb.TaskPlaced)
    first = await _placement(stub, placed)
    assert not first.HasField("expected_run_time")  # nothing run yet: no expectation
    first_done.touch()
    past += [_request(workflow, 256 * MIB, {"mib": 16}) for _ in range(2)]
    for request in past[1:]:
        await bus.publish(request)
    for request in past:
        _, finished = await heard.ended(request.attempt)
        assert isinstance(finished, pb.TaskFinished), finished

    release = tmp_path / "release"
    request = _request(workflow, 256 * MIB, {"mib": 16, "marker": str(release)})
    await bus.publish(request)
    (placed,) = await heard.until(request.attempt, pb.TaskPlaced)
    assert isinstance(placed, pb.TaskPlaced)
    placement = await _placement(stub, placed)
    release.touch()
    # Each past attempt held its memory at least 0.5 s (the task sleeps so long).
    assert placement.HasField("expected_run_time")
    assert 0.5 <= placement.expected_run_time.ToTimedelta().total_seconds() < BOUND
    _, finished = await heard.ended(request.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
