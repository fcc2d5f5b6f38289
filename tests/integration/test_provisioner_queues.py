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
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from conftest import STRATA
from provisioner_peer import (
    ADMIN,
    BOUND,
    TOKENS,
    VIEWER,
    Agent,
    Scheduler,
    connect,
    playing_scheduler,
    until_no_node_takes_work,
)
from service_processes import ServiceProcess, running

from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.core.rpc.status import field_violations

pytestmark = pytest.mark.integration

GIB = 1024**3
MIB = 1024**2
ONE_CPU = Resources(cpu_millis=1000, memory_bytes=64 * MIB)


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """A provisioner on which no node but a test's own takes its attempts: a node whose
    stream closed takes no work, but the stack outlives test modules, and the row of a
    node whose provisioner was killed stays READY until the new provisioner declares it
    lost, a lease after it started; the module waits for that (at once when there is
    none)."""
    folder: Path = tmp_path_factory.mktemp("queues")
    async with running("provisioner", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS)) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            await until_no_node_takes_work(ProvisionerServiceStub(channel))
        yield service


@pytest.fixture
async def stub(provisioner: ServiceProcess) -> AsyncIterator[ProvisionerServiceStub]:
    async with grpc.aio.insecure_channel(provisioner.address) as channel:
        yield ProvisionerServiceStub(channel)


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with playing_scheduler("queues-test", ONE_CPU) as requested:
        yield requested


async def _connect(
    stub: ProvisionerServiceStub, scheduler: Scheduler, capacity: Resources
) -> Agent:
    """A test agent that finishes at once what the test did not request."""
    node_id = f"queues-node-{uuid.uuid4().hex[:8]}"
    return await connect(stub, capacity, node_id=node_id, ours=scheduler.requested)


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
    agent = await _connect(stub, scheduler, Resources(cpu_millis=4000, memory_bytes=4 * GIB))
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
    agent = await _connect(stub, scheduler, Resources(cpu_millis=8000, memory_bytes=4 * GIB))
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
        ours = [p for p in node.placements if scheduler.requested(p.attempt)]
        assert sorted(p.user for p in ours) == ["alice", "alice", "bob"]

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


async def _strata(
    provisioner: ServiceProcess, token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The CLI's run, in a thread: the test agents keep heartbeating meanwhile."""
    port = provisioner.address.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "STRATA_SERVICE_PROVISIONER_PORT": port,
        "STRATA_AUTH_CLIENT_TOKEN": token,
        "COLUMNS": "250",
    }
    command = [str(STRATA), *args]
    return await asyncio.to_thread(
        lambda: subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    )


async def test_the_cli_applies_a_queue_and_shows_who_waits_and_why(
    provisioner: ServiceProcess, stub: ProvisionerServiceStub, scheduler: Scheduler
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    refused = await _strata(
        provisioner, "admin-token", "queues", "apply", name, "--quota", "memory=8GB"
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"queue {name!r} refused: quota.memory: "), refused.stderr

    applied = await _strata(
        provisioner, "admin-token", "queues", "apply", name, "--quota", "cpu=1", "--weight", "2"
    )
    assert applied.returncode == 0, applied.stderr
    agent = await _connect(stub, scheduler, Resources(cpu_millis=4000, memory_bytes=4 * GIB))
    try:
        first, second = await scheduler.request(name, ["ann", "bo"])
        assert (await agent.assigned()).attempt == first.attempt
        await _queue_until(stub, name, lambda q: _all_say_why(q, 1))

        listed = await _strata(provisioner, "viewer-token", "queues", "list")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if name in line)
        cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
        assert cells[1:] == ["cpu 1", "1 CPU, 0.1Gi", "2", "none", "1", "1"], row

        shown = await _strata(provisioner, "viewer-token", "queues", "show", name)
        assert shown.returncode == 0, shown.stderr
        waiting = next(line for line in shown.stdout.splitlines() if second.attempt.run_id in line)
        assert "t-01" in waiting, waiting
        assert "bo" in waiting, waiting
        assert f"queue '{name}' quota reached" in waiting, waiting
        assert "ann" in shown.stdout  # running by user
    finally:
        await agent.close()
