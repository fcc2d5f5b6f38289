"""Agents and a scheduler as a provisioner test plays them, on the real provisioner.

An :class:`Agent` is a real gRPC ``Connect`` stream the test drives: it registers,
heartbeats in the background (so its lease never lapses while the test runs), and
reads assignments and drain requests and reports on attempts when the test says.
Kafka outlives test sessions, so the provisioner may be handed requests no
provisioner consumed before (a scheduler test's, say); an agent told which
attempts are the test's finishes any other it is assigned at once, as a real
agent would run it, so it holds no room and keeps no node from draining.
A :class:`Scheduler` publishes ``TaskRequested`` to Kafka, and cancels what it
requested when the test ends, so nothing it left waiting is placed on a later
test's node (the stack outlives the session).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import grpc

from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskCancelRequested, TaskRequested
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {
    "agent-token": {"principal": "agent-1", "roles": ["agent"]},
    "viewer-token": {"principal": "bob", "roles": ["viewer"]},
    "admin-token": {"principal": "ops", "roles": ["admin"]},
}
AGENT = (("authorization", "Bearer agent-token"),)
VIEWER = (("authorization", "Bearer viewer-token"),)
ADMIN = (("authorization", "Bearer admin-token"),)
HEARTBEAT = 0.5
"""Seconds between the test agents' heartbeats, well inside any lease a test sets."""

Reply = Literal["accepted", "assignment", "cancellation", "drain"]
"""What the provisioner may send an agent."""


@dataclass
class Agent:
    """An agent's end of a Connect stream."""

    call: grpc.aio.StreamStreamCall
    node_id: str
    stub: ProvisionerServiceStub
    ours: Callable[[TaskAttemptRef], bool]
    heartbeats: asyncio.Task[None] | None = None

    def start_heartbeats(self) -> None:
        self.heartbeats = asyncio.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await self.call.write(pb.ConnectRequest(heartbeat=pb.Heartbeat(node_id=self.node_id)))
            await asyncio.sleep(HEARTBEAT)

    async def next_message(self, kind: Reply) -> pb.ConnectResponse:
        """The next message of ``kind`` ("assignment", "drain", ...) sent to the node."""
        async with asyncio.timeout(BOUND):
            while True:
                reply: pb.ConnectResponse = await self.call.read()
                assert reply is not grpc.aio.EOF, f"{self.node_id}: the stream ended"
                if reply.HasField("assignment") and not self.ours(reply.assignment.attempt):
                    await self.finish(reply.assignment.attempt)
                elif reply.HasField(kind):
                    return reply

    async def assigned(self) -> pb.TaskAssignment:
        """The next assignment sent to the node."""
        return (await self.next_message("assignment")).assignment

    async def started(self, attempt: TaskAttemptRef) -> None:
        await self.call.write(pb.ConnectRequest(task_started=pb.TaskStarted(attempt=attempt)))

    async def finish(self, attempt: TaskAttemptRef) -> None:
        await self.call.write(pb.ConnectRequest(task_finished=pb.TaskFinished(attempt=attempt)))

    async def leaving(self, reason: str) -> None:
        await self.call.write(pb.ConnectRequest(leaving=pb.AgentLeaving(reason=reason)))

    async def hang_up(self) -> None:
        """End the stream without a word (no AgentLeaving)."""
        if self.heartbeats is not None:
            self.heartbeats.cancel()
            await asyncio.gather(self.heartbeats, return_exceptions=True)
        await self.call.done_writing()

    async def close(self) -> None:
        """Leave, and return once the node is lost: until then it could take the next
        test's attempts."""
        await self.hang_up()
        request = pb.GetNodeRequest(node_id=self.node_id)
        async with asyncio.timeout(BOUND):
            while True:
                reply = await self.stub.GetNode(request, metadata=VIEWER)
                if reply.node.state == pb.NODE_STATE_LOST:
                    return
                await asyncio.sleep(0.2)


async def connect(
    stub: ProvisionerServiceStub,
    capacity: Resources,
    node_id: str = "",
    running: Iterable[TaskAttemptRef] = (),
    ours: Callable[[TaskAttemptRef], bool] = lambda attempt: True,
) -> Agent:
    """A heartbeating agent of ``capacity`` registered as ``node_id`` (a new one if
    empty), listing ``running`` as what it still runs; assigned an attempt not
    ``ours``, it finishes it at once."""
    node_id = node_id or f"test-node-{uuid.uuid4().hex[:8]}"
    call = stub.Connect(metadata=AGENT)
    await call.write(
        pb.ConnectRequest(
            registration=pb.AgentRegistration(
                node_id=node_id,
                hostname=node_id,
                capacity=capacity,
                agent_version="test",
                running=list(running),
            )
        )
    )
    async with asyncio.timeout(BOUND):
        reply: pb.ConnectResponse = await call.read()
    assert reply.HasField("accepted"), reply
    agent = Agent(call, node_id, stub, ours)
    agent.start_heartbeats()
    return agent


async def until_no_node_takes_work(stub: ProvisionerServiceStub) -> None:
    """Until no node is READY: one another test module left would take this one's work."""
    ready = pb.ListNodesRequest(states=[pb.NODE_STATE_READY])
    async with asyncio.timeout(BOUND):
        while True:
            if not (await stub.ListNodes(ready, metadata=VIEWER)).nodes:
                return
            await asyncio.sleep(0.2)


@asynccontextmanager
async def playing_scheduler(workflow_name: str, resources: Resources) -> AsyncIterator[Scheduler]:
    """A :class:`Scheduler` asking ``resources`` for each attempt of ``workflow_name``;
    what it requested is cancelled when the block ends."""
    async with Bus(workflow_name, kafka=load(KafkaSettings)) as bus:
        scheduler = Scheduler(bus, resources, workflow_name)
        try:
            yield scheduler
        finally:
            await scheduler.cancel_all()


@dataclass
class Scheduler:
    """Publishes requests as the scheduler would, and remembers them."""

    bus: Bus
    resources: Resources
    workflow_name: str
    sent: list[TaskRequested] = field(default_factory=list)

    async def request(self, queue: str, users: Iterable[str]) -> list[TaskRequested]:
        """One run's tasks in ``queue``, one for each of ``users``, in that order: one
        run id is one Kafka key, so the provisioner queues them in this order."""
        run_id = str(uuid.uuid4())
        published = [
            self._request(run_id, f"t-{i:02d}", queue, user) for i, user in enumerate(users)
        ]
        for request in published:
            self.sent.append(request)
            await self.bus.publish(request)
        return published

    def requested(self, attempt: TaskAttemptRef) -> bool:
        """Whether ``attempt`` is one this scheduler asked for."""
        return any(r.attempt == attempt for r in self.sent)

    async def cancel_all(self) -> None:
        for request in self.sent:
            await self.bus.publish(TaskCancelRequested(attempt=request.attempt, reason="test over"))

    def _request(self, run_id: str, task_id: str, queue: str, user: str) -> TaskRequested:
        return TaskRequested(
            attempt=TaskAttemptRef(run_id=run_id, task_id=task_id, attempt=1),
            workflow_name=self.workflow_name,
            entrypoint="pipeline.tasks:train",
            bundle=BundleRef(uri="s3://bundles/abc.tar.gz", sha256="abc"),
            resources=self.resources,
            queue=queue,
            user=user,
        )
