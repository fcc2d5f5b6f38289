"""Work moves when it changes, not when a poll comes round: a real ``python -m
strata.provisioner`` whose polls are an hour apart still places a requested
attempt, sends it to the agent, places the next one when the first ends or when a
node arrives, and sends a cancellation, each as the change commits.

The provisioner runs alone here (its own module): a second process on the same
schema and consumer group could place or queue an attempt itself, and then this
one, not woken, would rightly wait for its poll. The bounds below are guards
against hanging, far below the hour-long polls, not timing checks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from service_processes import running

from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskCancelRequested, TaskRequested
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load

pytestmark = pytest.mark.integration

BOUND = 30.0
"""Bound on every wait: a guard against hanging, not a timing check."""
HOUR = "3600"
TOKENS = {
    "agent-token": {"principal": "agent-1", "roles": ["agent"]},
    "viewer-token": {"principal": "bob", "roles": ["viewer"]},
}
AGENT = (("authorization", "Bearer agent-token"),)
VIEWER = (("authorization", "Bearer viewer-token"),)
GIB = 1024**3
GPUS = 7
"""GPUs of this test's attempts: only its own node has room, for one at a time (other
tests' attempts ask for none, so they never take its room, though they may be sent
to it)."""


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[ProvisionerServiceStub]:
    async with (
        running(
            "provisioner",
            tmp_path,
            STRATA_PROVISIONER_PLACEMENT_POLL=HOUR,
            STRATA_PROVISIONER_DELIVERY_POLL=HOUR,
            STRATA_AUTH_TOKENS=json.dumps(TOKENS),
        ) as provisioner,
        grpc.aio.insecure_channel(provisioner.address) as channel,
    ):
        yield ProvisionerServiceStub(channel)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    async with Bus("provisioner-wakeups-test", kafka=load(KafkaSettings)) as opened:
        yield opened


def _request(queue: str, task_id: str) -> TaskRequested:
    return TaskRequested(
        attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id=task_id, attempt=1),
        workflow_name="wakeups",
        entrypoint="pipeline.tasks:train",
        bundle=BundleRef(uri="s3://bundles/abc.tar.gz", sha256="abc"),
        resources=Resources(cpu_millis=1, memory_bytes=GIB, gpus=GPUS),
        queue=queue,
    )


async def _waits(stub: ProvisionerServiceStub, queue: str, attempt: TaskAttemptRef) -> None:
    """Until a placement round has looked at ``attempt`` and left it waiting."""
    async with asyncio.timeout(BOUND):
        while True:
            reply = await stub.GetQueue(pb.GetQueueRequest(name=queue), metadata=VIEWER)
            if [(p.attempt, bool(p.waiting_for)) for p in reply.queue.pending] == [(attempt, True)]:
                return
            await asyncio.sleep(0.05)


async def _received(call: grpc.aio.StreamStreamCall, kind: str, attempt: TaskAttemptRef) -> None:
    """Until the session sends ``kind`` (assignment, cancellation) for ``attempt``;
    other tests' attempts may come first."""
    async with asyncio.timeout(BOUND):
        while True:
            reply: pb.ConnectResponse = await call.read()
            if reply.WhichOneof("message") == kind and getattr(reply, kind).attempt == attempt:
                return


async def test_placement_and_delivery_follow_each_change_without_waiting_for_a_poll(
    stub: ProvisionerServiceStub, bus: Bus
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    first, second = _request(queue, "first"), _request(queue, "second")

    # Arrival: a round places (or here, with no node big enough, holds) the request.
    await bus.publish(first)
    await _waits(stub, queue, first.attempt)

    # A node registering: the waiting attempt is placed on it and sent down.
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    call = stub.Connect(metadata=AGENT)
    await call.write(
        pb.ConnectRequest(
            registration=pb.AgentRegistration(
                node_id=node_id,
                hostname="host",
                capacity=Resources(cpu_millis=1000, memory_bytes=64 * GIB, gpus=GPUS + 3),
                agent_version="test",
            )
        )
    )
    await _received(call, "assignment", first.attempt)

    # Room freed: the next attempt waits for the first to end, then is sent.
    await bus.publish(second)
    await _waits(stub, queue, second.attempt)
    await call.write(pb.ConnectRequest(task_started=pb.TaskStarted(attempt=first.attempt)))
    await call.write(pb.ConnectRequest(task_finished=pb.TaskFinished(attempt=first.attempt)))
    await _received(call, "assignment", second.attempt)

    # A cancellation of a placed attempt is sent as soon as it is recorded.
    await call.write(pb.ConnectRequest(task_started=pb.TaskStarted(attempt=second.attempt)))
    await bus.publish(TaskCancelRequested(attempt=second.attempt, reason="bob cancelled it"))
    await _received(call, "cancellation", second.attempt)
    await call.done_writing()
