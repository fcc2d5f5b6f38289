"""Draining nodes, listing placements, and agents leaving, on a real
``python -m strata.provisioner`` over the real Postgres and Kafka.

The test plays agents on real gRPC ``Connect`` streams (they heartbeat, so no lease
lapses while a test runs) and the scheduler by publishing ``TaskRequested``. Its
attempts ask for more CPUs than any node another test module registers, so only
this module's large nodes can take them. What operators rely on: a drained node
takes no new attempt, the attempt running on it finishes there, and the node then
reports DRAINED; the drain holds when its agent reconnects; a second drain changes
nothing and an unknown node is NOT_FOUND naming it. ``ListPlacements`` shows what
runs where. An agent that says it is leaving takes no new attempt from that moment
(not a lease later), while the one it runs finishes; an agent whose stream merely
closed keeps its attempts until its lease decides.
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
)
from service_processes import ServiceProcess, running

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.rpc.status import field_violations

pytestmark = pytest.mark.integration

GIB = 1024**3
LARGE = Resources(cpu_millis=400_000, memory_bytes=GIB)
"""What each attempt asks for: far more CPUs than any other module's test node has."""
NODE = Resources(cpu_millis=1_000_000, memory_bytes=16 * GIB)
"""A node with room for two such attempts."""
LEASE = "PT60S"
"""Long: the closed-stream test looks at placements while the lease still runs."""


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    folder: Path = tmp_path_factory.mktemp("drain")
    async with running(
        "provisioner", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS), STRATA_PROVISIONER_LEASE=LEASE
    ) as service:
        yield service


@pytest.fixture
async def stub(provisioner: ServiceProcess) -> AsyncIterator[ProvisionerServiceStub]:
    async with grpc.aio.insecure_channel(provisioner.address) as channel:
        yield ProvisionerServiceStub(channel)


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    async with playing_scheduler("drain-test", LARGE) as requested:
        yield requested


@pytest.fixture
async def agents(stub: ProvisionerServiceStub) -> AsyncIterator[list[Agent]]:
    """The test's agents, each closed at the end (its node then takes no work)."""
    connected: list[Agent] = []
    try:
        yield connected
    finally:
        for agent in connected:
            await agent.close()


async def _node_until(
    stub: ProvisionerServiceStub, node_id: str, wanted: Callable[[pb.GetNodeResponse], bool]
) -> pb.GetNodeResponse:
    async with asyncio.timeout(BOUND):
        while True:
            reply: pb.GetNodeResponse = await stub.GetNode(
                pb.GetNodeRequest(node_id=node_id), metadata=VIEWER
            )
            if wanted(reply):
                return reply
            await asyncio.sleep(0.05)


async def _waits(stub: ProvisionerServiceStub, queue: str, attempt: TaskAttemptRef) -> str:
    """Why ``attempt`` waits in ``queue``, once a placement round looked at it and left it
    (any node it could go on would have taken it in that round)."""
    async with asyncio.timeout(BOUND):
        while True:
            reply = await stub.GetQueue(pb.GetQueueRequest(name=queue), metadata=VIEWER)
            for pending in reply.queue.pending:
                if pending.attempt == attempt and pending.waiting_for:
                    return str(pending.waiting_for)
            await asyncio.sleep(0.05)


async def _placed_on(
    stub: ProvisionerServiceStub, scheduler: Scheduler, node_id: str
) -> list[pb.Placement]:
    """The test's placements on ``node_id`` (see :mod:`provisioner_peer` for others')."""
    request = pb.ListPlacementsRequest(node_id=node_id)
    placed = (await stub.ListPlacements(request, metadata=VIEWER)).placements
    return [p for p in placed if scheduler.requested(p.attempt)]


async def _running_one(
    stub: ProvisionerServiceStub, scheduler: Scheduler, queue: str
) -> tuple[Agent, TaskRequested]:
    """A new agent running one attempt of ``queue``, which it reported started."""
    agent = await connect(stub, NODE, ours=scheduler.requested)
    (request,) = await scheduler.request(queue, ["ann"])
    assert (await agent.assigned()).attempt == request.attempt
    await agent.started(request.attempt)
    return agent, request


def _queue() -> str:
    return f"drain-{uuid.uuid4().hex[:8]}"


async def test_a_drained_node_finishes_its_attempt_takes_no_new_one_and_reports_drained(
    stub: ProvisionerServiceStub, scheduler: Scheduler, agents: list[Agent]
) -> None:
    queue = _queue()
    agent, first = await _running_one(stub, scheduler, queue)
    agents.append(agent)

    request = pb.DrainNodeRequest(node_id=agent.node_id, reason="kernel upgrade")
    drained = await stub.DrainNode(request, metadata=ADMIN)
    assert drained.node.state == pb.NODE_STATE_DRAINING
    told = (await agent.next_message("drain")).drain
    assert (told.reason, told.shutdown_when_empty) == ("kernel upgrade", False)

    # The node has room for the next attempt, but takes it no more.
    (second,) = await scheduler.request(queue, ["ann"])
    assert await _waits(stub, queue, second.attempt)
    assert [p.attempt for p in (await _placed_on(stub, scheduler, agent.node_id))] == [
        first.attempt
    ]
    again = await stub.DrainNode(request, metadata=ADMIN)
    assert again.node.state == pb.NODE_STATE_DRAINING

    # The running attempt finishes on the node; then the node is drained.
    await agent.finish(first.attempt)
    node = await _node_until(stub, agent.node_id, lambda r: r.node.state == pb.NODE_STATE_DRAINED)
    assert node.placements == []
    twice = await stub.DrainNode(request, metadata=ADMIN)
    assert twice.node.state == pb.NODE_STATE_DRAINED

    # The waiting attempt was kept for a node that takes work.
    other = await connect(stub, NODE, ours=scheduler.requested)
    agents.append(other)
    assert (await other.assigned()).attempt == second.attempt


async def test_a_drain_holds_when_the_agent_reconnects(
    stub: ProvisionerServiceStub, scheduler: Scheduler, agents: list[Agent]
) -> None:
    agent = await connect(stub, NODE, ours=scheduler.requested)
    request = pb.DrainNodeRequest(
        node_id=agent.node_id, reason="retiring", shutdown_when_empty=True
    )
    assert (await stub.DrainNode(request, metadata=ADMIN)).node.state == pb.NODE_STATE_DRAINED
    await agent.hang_up()
    await _node_until(stub, agent.node_id, lambda r: r.node.state == pb.NODE_STATE_LOST)

    back = await connect(stub, NODE, node_id=agent.node_id, ours=scheduler.requested)
    agents.append(back)
    told = (await back.next_message("drain")).drain
    assert (told.reason, told.shutdown_when_empty) == ("retiring", True)
    node = await stub.GetNode(pb.GetNodeRequest(node_id=back.node_id), metadata=VIEWER)
    assert node.node.state == pb.NODE_STATE_DRAINED
    queue = _queue()
    (waiting,) = await scheduler.request(queue, ["ann"])
    assert await _waits(stub, queue, waiting.attempt)
    assert await _placed_on(stub, scheduler, back.node_id) == []


async def test_draining_an_unknown_node_is_not_found_naming_it(
    stub: ProvisionerServiceStub,
) -> None:
    name = f"nowhere-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.DrainNode(pb.DrainNodeRequest(node_id=name), metadata=ADMIN)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert name in (refused.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.DrainNode(pb.DrainNodeRequest(), metadata=ADMIN)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node_id" in field_violations(empty.value)

    with pytest.raises(grpc.aio.AioRpcError) as viewer:
        await stub.DrainNode(pb.DrainNodeRequest(node_id=name), metadata=VIEWER)
    assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_list_placements_shows_what_runs_on_which_node_a_page_at_a_time(
    stub: ProvisionerServiceStub, scheduler: Scheduler, agents: list[Agent]
) -> None:
    agent = await connect(stub, NODE, ours=scheduler.requested)
    agents.append(agent)
    first, second = await scheduler.request(_queue(), ["ann", "bo"])
    assert (await agent.assigned()).attempt == first.attempt
    assert (await agent.assigned()).attempt == second.attempt
    await agent.started(first.attempt)
    await _node_until(stub, agent.node_id, lambda r: any(p.running for p in r.placements))

    on_node = pb.ListPlacementsRequest(node_id=agent.node_id)
    listed = await stub.ListPlacements(on_node, metadata=VIEWER)
    assert listed.next_page_token == ""
    assert all(p.node_id == agent.node_id for p in listed.placements)
    running, placed = [p for p in listed.placements if scheduler.requested(p.attempt)]
    assert (running.attempt, placed.attempt) == (first.attempt, second.attempt)
    assert (running.node_id, running.running, running.user) == (agent.node_id, True, "ann")
    assert running.reserved.cpu_millis == LARGE.cpu_millis
    assert running.HasField("placed_at")
    assert not placed.running

    of_run = pb.ListPlacementsRequest(run_id=first.attempt.run_id, page_size=1)
    page = await stub.ListPlacements(of_run, metadata=VIEWER)
    assert [p.attempt for p in page.placements] == [first.attempt]
    of_run.page_token = page.next_page_token
    page = await stub.ListPlacements(of_run, metadata=VIEWER)
    assert [p.attempt for p in page.placements] == [second.attempt]
    assert page.next_page_token == ""

    elsewhere = pb.ListPlacementsRequest(node_id=agent.node_id, run_id=str(uuid.uuid4()))
    assert not (await stub.ListPlacements(elsewhere, metadata=VIEWER)).placements
    bad = pb.ListPlacementsRequest(page_token="not a token")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListPlacements(bad, metadata=VIEWER)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in field_violations(refused.value)


async def test_the_cli_lists_the_placements_of_a_node(
    provisioner: ServiceProcess,
    stub: ProvisionerServiceStub,
    scheduler: Scheduler,
    agents: list[Agent],
) -> None:
    queue = _queue()
    agent, first = await _running_one(stub, scheduler, queue)
    agents.append(agent)
    await _node_until(stub, agent.node_id, lambda r: any(p.running for p in r.placements))

    port = provisioner.address.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "STRATA_SERVICE_PROVISIONER_PORT": port,
        "STRATA_AUTH_CLIENT_TOKEN": "viewer-token",
        "COLUMNS": "250",
    }
    command = [str(STRATA), "nodes", "placements", "--node", agent.node_id]
    listed = await asyncio.to_thread(
        lambda: subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    )
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if first.attempt.run_id in line)
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    assert cells[1:9] == [
        "t-00",
        "1",
        agent.node_id,
        queue,
        "ann",
        "400 CPU, 1.0Gi",
        "-",  # a task never run before: no expected run time yet
        "running",
    ]


async def test_a_leaving_agent_takes_no_new_attempt_at_once_and_its_running_one_finishes(
    stub: ProvisionerServiceStub, scheduler: Scheduler, agents: list[Agent]
) -> None:
    queue = _queue()
    agent, first = await _running_one(stub, scheduler, queue)

    # It still heartbeats, so its lease is far from over: the word alone stops placement.
    await agent.leaving("rolling restart")
    await _node_until(stub, agent.node_id, lambda r: r.node.state == pb.NODE_STATE_DRAINING)
    (second,) = await scheduler.request(queue, ["ann"])
    assert await _waits(stub, queue, second.attempt)
    assert [p.attempt for p in (await _placed_on(stub, scheduler, agent.node_id))] == [
        first.attempt
    ]

    await agent.finish(first.attempt)
    await _node_until(stub, agent.node_id, lambda r: r.node.state == pb.NODE_STATE_DRAINED)
    await agent.close()

    # Leaving lasts for the session: the restarted agent takes work again.
    back = await connect(stub, NODE, node_id=agent.node_id, ours=scheduler.requested)
    agents.append(back)
    assert (await back.assigned()).attempt == second.attempt


async def test_a_closed_stream_takes_no_new_attempt_but_keeps_its_running_one_until_the_lease(
    stub: ProvisionerServiceStub, scheduler: Scheduler, agents: list[Agent]
) -> None:
    queue = _queue()
    agent, first = await _running_one(stub, scheduler, queue)

    await agent.hang_up()
    node = await _node_until(stub, agent.node_id, lambda r: r.node.state == pb.NODE_STATE_LOST)
    assert [p.attempt for p in node.placements] == [first.attempt]
    (second,) = await scheduler.request(queue, ["ann"])
    assert await _waits(stub, queue, second.attempt)
    assert [p.attempt for p in (await _placed_on(stub, scheduler, agent.node_id))] == [
        first.attempt
    ]

    # Back within its lease, listing the attempt: it keeps it and takes work again.
    back = await connect(
        stub, NODE, node_id=agent.node_id, running=[first.attempt], ours=scheduler.requested
    )
    agents.append(back)
    assert (await back.assigned()).attempt == second.attempt
    placed = await _placed_on(stub, scheduler, back.node_id)
    assert [p.attempt for p in placed] == [first.attempt, second.attempt]
