"""Queues on a real ``python -m strata.provisioner``, over the real Postgres and Kafka.

The test plays an agent on a real gRPC ``Connect`` stream (it decides when an
attempt ends) and the scheduler by publishing ``TaskRequested`` to Kafka. What
teams rely on: a queue's quota bounds what its attempts hold, so a flood in one
queue leaves another queue room, and room that frees up goes to the queue below
its share before the flood, however long the flood has waited; a user at the
queue's per-user cap waits while others' attempts start, and ``GetQueue`` says
why each attempt waits; ``ApplyQueue`` refuses a bad queue naming the field, and
only admins may apply one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import STRATA
from service_processes import ServiceProcess, running

from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskCancelRequested, TaskRequested
from strata.core.bus import Bus
from strata.core.rpc.status import field_violations
from strata.core.settings import KafkaSettings, load

pytestmark = pytest.mark.integration

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
GIB = 1024**3
MIB = 1024**2
ONE_CPU = Resources(cpu_millis=1000, memory_bytes=64 * MIB)
LEASE = "PT3S"
HEARTBEAT = 0.5
"""Seconds between the test agents' heartbeats, well inside the lease."""


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """A provisioner with a short lease, so that no node but a test's own takes its
    attempts: the stack outlives test modules, and a node another test registered stays
    a place for attempts until its lease lapses (this module's agents heartbeat)."""
    folder: Path = tmp_path_factory.mktemp("queues")
    async with running(
        "provisioner", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS), STRATA_PROVISIONER_LEASE=LEASE
    ) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            await _until_no_node_takes_work(ProvisionerServiceStub(channel))
        yield service


async def _until_no_node_takes_work(stub: ProvisionerServiceStub) -> None:
    ready = pb.ListNodesRequest(states=[pb.NODE_STATE_READY])
    async with asyncio.timeout(BOUND):
        while True:
            if not (await stub.ListNodes(ready, metadata=VIEWER)).nodes:
                return
            await asyncio.sleep(0.2)


@pytest.fixture
async def stub(provisioner: ServiceProcess) -> AsyncIterator[ProvisionerServiceStub]:
    async with grpc.aio.insecure_channel(provisioner.address) as channel:
        yield ProvisionerServiceStub(channel)


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    """The test's scheduler: what it requested is cancelled afterwards, so nothing it left
    waiting is placed on a later test's node (the stack outlives the session)."""
    async with Bus("queues-test", kafka=load(KafkaSettings)) as bus:
        requested = Scheduler(bus)
        try:
            yield requested
        finally:
            for request in requested.sent:
                await bus.publish(TaskCancelRequested(attempt=request.attempt, reason="test over"))


@dataclass
class Scheduler:
    bus: Bus
    sent: list[TaskRequested] = field(default_factory=list)

    async def request(self, queue: str, users: Iterable[str]) -> list[TaskRequested]:
        """One run's tasks in ``queue``, one a CPU for each of ``users``, in that order: one
        run id is one Kafka key, so the provisioner queues them in this order."""
        run_id = str(uuid.uuid4())
        published = [_request(run_id, f"t-{i:02d}", queue, user) for i, user in enumerate(users)]
        for request in published:
            self.sent.append(request)
            await self.bus.publish(request)
        return published


def _request(run_id: str, task_id: str, queue: str, user: str) -> TaskRequested:
    return TaskRequested(
        attempt=TaskAttemptRef(run_id=run_id, task_id=task_id, attempt=1),
        workflow_name="queues-test",
        entrypoint="pipeline.tasks:train",
        bundle=BundleRef(uri="s3://bundles/abc.tar.gz", sha256="abc"),
        resources=ONE_CPU,
        queue=queue,
        user=user,
    )


@dataclass
class Agent:
    """An agent's end of a Connect stream."""

    call: grpc.aio.StreamStreamCall
    node_id: str
    stub: ProvisionerServiceStub
    heartbeats: asyncio.Task[None] | None = None

    def start_heartbeats(self) -> None:
        self.heartbeats = asyncio.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await self.call.write(pb.ConnectRequest(heartbeat=pb.Heartbeat(node_id=self.node_id)))
            await asyncio.sleep(HEARTBEAT)

    async def assigned(self) -> pb.TaskAssignment:
        """The next assignment sent to the node."""
        async with asyncio.timeout(BOUND):
            while True:
                reply: pb.ConnectResponse = await self.call.read()
                if reply.HasField("assignment"):
                    return reply.assignment

    async def finish(self, attempt: TaskAttemptRef) -> None:
        await self.call.write(pb.ConnectRequest(task_finished=pb.TaskFinished(attempt=attempt)))

    async def close(self) -> None:
        """Leave, and return once the node is lost: until then it could take the next
        test's attempts."""
        if self.heartbeats is not None:
            self.heartbeats.cancel()
        await self.call.done_writing()
        request = pb.GetNodeRequest(node_id=self.node_id)
        async with asyncio.timeout(BOUND):
            while True:
                reply = await self.stub.GetNode(request, metadata=VIEWER)
                if reply.node.state == pb.NODE_STATE_LOST:
                    return
                await asyncio.sleep(0.2)


async def _connect(stub: ProvisionerServiceStub, capacity: Resources) -> Agent:
    node_id = f"queues-node-{uuid.uuid4().hex[:8]}"
    call = stub.Connect(metadata=AGENT)
    await call.write(
        pb.ConnectRequest(
            registration=pb.AgentRegistration(
                node_id=node_id, hostname=node_id, capacity=capacity, agent_version="test"
            )
        )
    )
    async with asyncio.timeout(BOUND):
        reply: pb.ConnectResponse = await call.read()
    assert reply.HasField("accepted"), reply
    agent = Agent(call, node_id, stub)
    agent.start_heartbeats()
    return agent


async def _apply(stub: ProvisionerServiceStub, request: pb.ApplyQueueRequest) -> pb.Queue:
    reply: pb.ApplyQueueResponse = await stub.ApplyQueue(request, metadata=ADMIN)
    return reply.queue


async def _queue_until(
    stub: ProvisionerServiceStub, name: str, wanted: Callable[[pb.Queue], bool]
) -> pb.Queue:
    async with asyncio.timeout(BOUND):
        while True:
            reply = await stub.GetQueue(pb.GetQueueRequest(name=name), metadata=VIEWER)
            queue: pb.Queue = reply.queue
            if wanted(queue):
                return queue
            await asyncio.sleep(0.05)


def _all_say_why(queue: pb.Queue, count: int) -> bool:
    return len(queue.pending) == count and all(p.waiting_for for p in queue.pending)


async def test_a_flood_in_one_queue_leaves_another_queue_its_share(
    stub: ProvisionerServiceStub, scheduler: Scheduler
) -> None:
    suffix = uuid.uuid4().hex[:8]
    flood, team = f"flood-{suffix}", f"team-{suffix}"
    await _apply(stub, pb.ApplyQueueRequest(name=flood, quota={"cpu": "3"}))
    await _apply(stub, pb.ApplyQueueRequest(name=team, quota={"cpu": "3"}))
    agent = await _connect(stub, Resources(cpu_millis=4000, memory_bytes=4 * GIB))
    try:
        floods = await scheduler.request(flood, ["ann"] * 10)
        first = [(await agent.assigned()).attempt for _ in range(3)]
        assert first == [r.attempt for r in floods[:3]]
        held = await _queue_until(stub, flood, lambda q: _all_say_why(q, 7))
        assert held.reserved.cpu_millis == 3000
        assert held.quota.cpu_millis == 3000
        assert held.running == 3
        assert all("quota" in p.waiting_for for p in held.pending), held.pending

        # The quota left a CPU free: the other team's first attempt starts at once.
        teams = await scheduler.request(team, ["ann"] * 2)
        assert (await agent.assigned()).attempt == teams[0].attempt
        await _queue_until(stub, team, lambda q: _all_say_why(q, 1))

        # Room frees up: it goes to the team (1 of 4 CPUs) before the flood (2 of 4),
        # although the flood's attempts have waited longer.
        await agent.finish(floods[0].attempt)
        assert (await agent.assigned()).attempt == teams[1].attempt
        team_queue = await _queue_until(stub, team, lambda q: q.running == 2)
        assert team_queue.reserved.cpu_millis == 2000
        assert team_queue.waiting == 0
        # The flood's next attempt gets the next room.
        await agent.finish(teams[0].attempt)
        assert (await agent.assigned()).attempt == floods[3].attempt
    finally:
        await agent.close()


async def test_a_user_at_the_queue_cap_waits_while_other_users_start(
    stub: ProvisionerServiceStub, scheduler: Scheduler
) -> None:
    name = f"capped-{uuid.uuid4().hex[:8]}"
    applied = await _apply(stub, pb.ApplyQueueRequest(name=name, max_running_per_user=2))
    assert applied.max_running_per_user == 2
    assert applied.weight == 1.0
    agent = await _connect(stub, Resources(cpu_millis=8000, memory_bytes=4 * GIB))
    try:
        *alice, bob = await scheduler.request(name, ["alice"] * 4 + ["bob"])
        started = [(await agent.assigned()).attempt for _ in range(3)]
        assert started == [alice[0].attempt, alice[1].attempt, bob.attempt]

        queue = await _queue_until(stub, name, lambda q: _all_say_why(q, 2))
        assert [p.attempt for p in queue.pending] == [alice[2].attempt, alice[3].attempt]
        assert [p.user for p in queue.pending] == ["alice", "alice"]
        assert all("alice" in p.waiting_for for p in queue.pending), queue.pending
        assert dict(queue.running_by_user) == {"alice": 2, "bob": 1}
        assert (queue.running, queue.waiting) == (3, 2)
        node = await stub.GetNode(pb.GetNodeRequest(node_id=agent.node_id), metadata=VIEWER)
        assert sorted(p.user for p in node.placements) == ["alice", "alice", "bob"]

        # One of alice's attempts ends: her next one starts.
        await agent.finish(alice[0].attempt)
        assert (await agent.assigned()).attempt == alice[2].attempt
    finally:
        await agent.close()


async def test_applied_queues_are_listed_with_their_quota_and_weight(
    stub: ProvisionerServiceStub,
) -> None:
    name = f"listed-{uuid.uuid4().hex[:8]}"
    await _apply(
        stub, pb.ApplyQueueRequest(name=name, quota={"memory": "8Gi", "gpu": "1"}, weight=2.5)
    )
    # Applying again changes it.
    await _apply(
        stub, pb.ApplyQueueRequest(name=name, quota={"cpu": "500m", "memory": "8Gi"}, weight=3)
    )
    listed = await stub.ListQueues(pb.ListQueuesRequest(), metadata=VIEWER)
    by_name = {q.name: q for q in listed.queues}
    assert "default" in by_name
    queue = by_name[name]
    assert queue.quota == Resources(cpu_millis=500, memory_bytes=8 * GIB)
    assert dict(queue.quota_limits) == {"cpu": "500m", "memory": "8Gi"}  # no GPU limit
    assert queue.weight == 3.0
    assert (queue.running, queue.waiting) == (0, 0)
    shown = await stub.GetQueue(pb.GetQueueRequest(name=name), metadata=VIEWER)
    assert shown.queue.quota == queue.quota
    assert shown.queue.reserved == Resources()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ApplyQueueRequest(name="neg", quota={"memory": "-1Gi"}), "quota.memory"),
        (pb.ApplyQueueRequest(name="disk", quota={"disk": "10Gi"}), "quota.disk"),
        (pb.ApplyQueueRequest(name="cpu", quota={"cpu": "lots"}), "quota.cpu"),
        (pb.ApplyQueueRequest(name="Not_A_Name"), "name"),
        (pb.ApplyQueueRequest(name="weight", weight=-1), "weight"),
        (pb.ApplyQueueRequest(name="cap", max_running_per_user=-3), "max_running_per_user"),
    ],
)
async def test_a_bad_queue_is_refused_naming_the_field(
    stub: ProvisionerServiceStub, request_: pb.ApplyQueueRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ApplyQueue(request_, metadata=ADMIN)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(refused.value), refused.value.details()


async def test_only_admins_apply_queues(stub: ProvisionerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ApplyQueue(pb.ApplyQueueRequest(name="mine"), metadata=VIEWER)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _strata(
    provisioner: ServiceProcess, token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    port = provisioner.address.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "STRATA_SERVICE_PROVISIONER_PORT": port,
        "STRATA_AUTH_CLIENT_TOKEN": token,
        "COLUMNS": "250",
    }
    return subprocess.run([STRATA, *args], env=env, capture_output=True, text=True, check=False)


async def test_the_cli_applies_a_queue_and_shows_who_waits_and_why(
    provisioner: ServiceProcess, stub: ProvisionerServiceStub, scheduler: Scheduler
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    refused = _strata(provisioner, "admin-token", "queues", "apply", name, "--quota", "memory=8GB")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"queue {name!r} refused: quota.memory: "), refused.stderr

    applied = _strata(
        provisioner, "admin-token", "queues", "apply", name, "--quota", "cpu=1", "--weight", "2"
    )
    assert applied.returncode == 0, applied.stderr
    agent = await _connect(stub, Resources(cpu_millis=4000, memory_bytes=4 * GIB))
    try:
        first, second = await scheduler.request(name, ["ann", "bo"])
        assert (await agent.assigned()).attempt == first.attempt
        await _queue_until(stub, name, lambda q: _all_say_why(q, 1))

        listed = _strata(provisioner, "viewer-token", "queues", "list")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if name in line)
        cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
        assert cells[1:] == ["cpu 1", "1 CPU, 0.1Gi", "2", "none", "1", "1"], row

        shown = _strata(provisioner, "viewer-token", "queues", "show", name)
        assert shown.returncode == 0, shown.stderr
        waiting = next(line for line in shown.stdout.splitlines() if second.attempt.run_id in line)
        assert "t-01" in waiting, waiting
        assert "bo" in waiting, waiting
        assert f"queue '{name}' quota reached" in waiting, waiting
        assert "ann" in shown.stdout  # running by user
    finally:
        await agent.close()
