"""Nodes and placement on a real ``python -m strata.provisioner``, over the real
Postgres and Kafka.

The test plays an agent on a real gRPC ``Connect`` stream, and the scheduler by
publishing ``TaskRequested`` to Kafka. What operators and agents rely on: an
agent that registers is a durable node others can list; nonsense capacity is
refused with the field named; heartbeats renew the node's lease; a requested
attempt reaches the agent as an assignment and is announced as ``TaskPlaced``;
an attempt too large for every node waits, and ``GetQueue`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.bus import Bus
from strata.core.rpc.status import field_violations
from strata.core.settings import KafkaSettings, load
from strata.core.topics import TASKS_EVENTS

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {
    "agent-token": {"principal": "agent-1", "roles": ["agent"]},
    "viewer-token": {"principal": "bob", "roles": ["viewer"]},
}
AGENT = (("authorization", "Bearer agent-token"),)
VIEWER = (("authorization", "Bearer viewer-token"),)
GIB = 1024**3
M = TypeVar("M", bound=Message)
HUGE = 10**9
"""CPU millicores no node of any test has: a node this large is this test's own."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Provisioner:
    address: str
    metrics_port: int

    def sample(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics``; 0 when it is not there yet."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match[1] != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match[3])
        return 0.0


def _text(log: Path) -> str:
    return log.read_text()


@contextlib.asynccontextmanager
async def _running(log: Path) -> AsyncIterator[Provisioner]:
    """A ``python -m strata.provisioner`` process, SERVING; SIGTERM on the way out."""
    port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "STRATA_SERVICE_PROVISIONER_PORT": str(port),
        "STRATA_SERVICE_PROVISIONER_METRICS_PORT": str(metrics_port),
        "STRATA_AUTH_TOKENS": json.dumps(TOKENS),
    }
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.provisioner", env=env, stderr=sink
        )
    address = f"127.0.0.1:{port}"
    try:
        async with asyncio.timeout(BOUND):
            while not await _serving(address):
                assert process.returncode is None, _text(log)
                await asyncio.sleep(0.2)
        yield Provisioner(address, metrics_port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Provisioner]:
    async with _running(tmp_path_factory.mktemp("provisioner") / "provisioner.log") as running:
        yield running


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def stub(provisioner: Provisioner) -> AsyncIterator[ProvisionerServiceStub]:
    async with grpc.aio.insecure_channel(provisioner.address) as channel:
        yield ProvisionerServiceStub(channel)


@dataclass
class Agent:
    """An agent's end of a Connect stream."""

    call: grpc.aio.StreamStreamCall
    node_id: str

    async def send(self, message: pb.ConnectRequest) -> None:
        await self.call.write(message)

    async def receive(self) -> pb.ConnectResponse:
        async with asyncio.timeout(BOUND):
            reply: pb.ConnectResponse = await self.call.read()
        return reply

    async def close(self) -> None:
        await self.call.done_writing()


def _registration(node_id: str, capacity: Resources, **fields: object) -> pb.ConnectRequest:
    return pb.ConnectRequest(
        registration=pb.AgentRegistration(
            node_id=node_id,
            hostname="host-" + node_id,
            capacity=capacity,
            agent_version="test",
            **fields,  # type: ignore[arg-type]
        )
    )


async def _connect(stub: ProvisionerServiceStub, capacity: Resources) -> Agent:
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    agent = Agent(stub.Connect(metadata=AGENT), node_id)
    await agent.send(_registration(node_id, capacity, labels={"zone": "test"}))
    reply = await agent.receive()
    assert reply.HasField("accepted"), reply
    assert reply.accepted.lease.seconds > 0
    return agent


async def _node(stub: ProvisionerServiceStub, node_id: str) -> pb.GetNodeResponse:
    reply: pb.GetNodeResponse = await stub.GetNode(
        pb.GetNodeRequest(node_id=node_id), metadata=VIEWER
    )
    return reply


async def test_a_registered_agent_is_a_node_people_can_list(
    stub: ProvisionerServiceStub,
) -> None:
    capacity = Resources(cpu_millis=4000, memory_bytes=8 * GIB, gpus=1)
    agent = await _connect(stub, capacity)

    node = (await _node(stub, agent.node_id)).node
    assert node.state == pb.NODE_STATE_READY
    assert node.capacity == capacity
    assert dict(node.labels) == {"zone": "test"}
    assert node.hostname == "host-" + agent.node_id
    listed = await stub.ListNodes(pb.ListNodesRequest(page_size=1000), metadata=VIEWER)
    assert agent.node_id in [n.node_id for n in listed.nodes]

    await agent.send(
        pb.ConnectRequest(heartbeat=pb.Heartbeat(node_id=agent.node_id, warm_bundles=["abc"]))
    )
    renewed = await _node_until(stub, agent.node_id, lambda n: n.last_seen_at != node.last_seen_at)
    assert renewed.last_seen_at.ToDatetime() > node.last_seen_at.ToDatetime()

    await agent.close()
    await _node_until(stub, agent.node_id, lambda n: n.state == pb.NODE_STATE_LOST)
    listed = await stub.ListNodes(pb.ListNodesRequest(page_size=1000), metadata=VIEWER)
    assert agent.node_id not in [n.node_id for n in listed.nodes]


async def _node_until(
    stub: ProvisionerServiceStub, node_id: str, wanted: Callable[[pb.Node], bool]
) -> pb.Node:
    async with asyncio.timeout(BOUND):
        while True:
            node = (await _node(stub, node_id)).node
            if wanted(node):
                return node
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("capacity", "field"),
    [
        (Resources(cpu_millis=2000, memory_bytes=0), "registration.capacity.memory_bytes"),
        (Resources(cpu_millis=-1, memory_bytes=GIB), "registration.capacity.cpu_millis"),
        (Resources(cpu_millis=1000, memory_bytes=GIB, gpus=-2), "registration.capacity.gpus"),
    ],
)
async def test_nonsense_capacity_is_refused_naming_the_field(
    stub: ProvisionerServiceStub, capacity: Resources, field: str
) -> None:
    node_id = f"bad-{uuid.uuid4().hex[:8]}"
    call = stub.Connect(metadata=AGENT)
    await call.write(_registration(node_id, capacity))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async with asyncio.timeout(BOUND):
            await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(refused.value)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _node(stub, node_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_that_does_not_start_with_a_registration_is_refused(
    stub: ProvisionerServiceStub,
) -> None:
    call = stub.Connect(metadata=AGENT)
    await call.write(pb.ConnectRequest(heartbeat=pb.Heartbeat(node_id="x")))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async with asyncio.timeout(BOUND):
            await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "registration" in field_violations(refused.value)


async def test_only_agents_may_connect(stub: ProvisionerServiceStub) -> None:
    # The edge refuses the call as it starts, before any message. A registration
    # written here would race the refusal, and about 1 % of such writes end the call
    # with grpc core's client-side INTERNAL ("Internal error from Core") instead of
    # the server's status (measured: 300 refused calls under load, with the old edge
    # and the new alike), so the call sends nothing.
    call = stub.Connect(metadata=VIEWER)
    async with asyncio.timeout(BOUND):
        assert await call.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call" in await call.details()


async def _first_reply(
    call: grpc.aio.StreamStreamCall, message: pb.ConnectRequest
) -> pb.ConnectResponse:
    """Send ``message`` and read the answer (the refusal shows on either, whichever is first)."""
    async with asyncio.timeout(BOUND):
        await call.write(message)
        reply: pb.ConnectResponse = await call.read()
    return reply


@pytest.fixture
async def placed() -> AsyncIterator[tuple[Bus, asyncio.Queue[pb.TaskPlaced]]]:
    bus = Bus("provisioner-test", kafka=load(KafkaSettings))
    heard: asyncio.Queue[pb.TaskPlaced] = asyncio.Queue()
    events = bus.consumer(TASKS_EVENTS, group=f"provisioner-test-{uuid.uuid4().hex[:8]}")

    @events.on(pb.TaskPlaced)
    async def on_placed(event: pb.TaskPlaced, envelope: Envelope) -> None:
        heard.put_nowait(event)

    async with bus:
        yield bus, heard


def _request(queue: str, resources: Resources, task_id: str = "train") -> TaskRequested:
    return TaskRequested(
        attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id=task_id, attempt=1),
        workflow_name="delivery",
        entrypoint="pipeline.tasks:train",
        bundle=BundleRef(uri="s3://bundles/abc.tar.gz", sha256="abc"),
        resources=resources,
        priority=1,
        queue=queue,
    )


async def _assigned(agent: Agent, request: TaskRequested) -> pb.TaskAssignment:
    """The assignment of ``request``; attempts other tests requested may come first."""
    async with asyncio.timeout(BOUND):
        while (assignment := (await agent.receive()).assignment).attempt != request.attempt:
            pass
    return assignment


async def test_a_requested_attempt_reaches_the_agent_and_one_too_large_waits_with_the_reason(
    stub: ProvisionerServiceStub, placed: tuple[Bus, asyncio.Queue[pb.TaskPlaced]]
) -> None:
    bus, heard = placed
    agent = await _connect(stub, Resources(cpu_millis=HUGE, memory_bytes=64 * GIB))
    queue = f"q-{uuid.uuid4().hex[:8]}"
    fits = _request(queue, Resources(cpu_millis=HUGE - 1000, memory_bytes=GIB))
    too_large = _request(queue, Resources(cpu_millis=HUGE * 10, memory_bytes=GIB), "huge")
    await bus.publish(too_large)
    await bus.publish(fits)

    assignment = await _assigned(agent, fits)
    assert assignment.attempt == fits.attempt
    assert assignment.entrypoint == fits.entrypoint
    assert assignment.bundle == fits.bundle
    assert assignment.limits == fits.resources

    async with asyncio.timeout(BOUND):
        while (event := await heard.get()).attempt != fits.attempt:
            pass
    assert event.node_id == agent.node_id
    node = await _node(stub, agent.node_id)
    assert fits.attempt in [p.attempt for p in node.placements]

    async with asyncio.timeout(BOUND):
        while True:
            pending = (await stub.GetQueue(pb.GetQueueRequest(name=queue), metadata=VIEWER)).queue
            if pending.pending and pending.pending[0].waiting_for:
                break
            await asyncio.sleep(0.05)
    assert [p.attempt for p in pending.pending] == [too_large.attempt]
    reason = pending.pending[0].waiting_for
    assert reason.startswith("needs 10000000 CPU; the largest node has"), reason
    await agent.close()


@pytest.fixture
async def reported() -> AsyncIterator[tuple[Bus, asyncio.Queue[Message]]]:
    bus = Bus("provisioner-test", kafka=load(KafkaSettings))
    heard: asyncio.Queue[Message] = asyncio.Queue()
    events = bus.consumer(TASKS_EVENTS, group=f"provisioner-test-{uuid.uuid4().hex[:8]}")

    async def on_report(event: Message, envelope: Envelope) -> None:
        heard.put_nowait(event)

    for kind in (pb.TaskStarted, pb.TaskFinished):
        events.handle(kind, on_report)
    async with bus:
        yield bus, heard


async def _heard(heard: asyncio.Queue[Message], kind: type[M], attempt: TaskAttemptRef) -> M:
    async with asyncio.timeout(BOUND):
        while True:
            event = await heard.get()
            if isinstance(event, kind) and event.attempt == attempt:  # type: ignore[attr-defined]
                return event


async def test_reports_are_announced_under_the_session_node_and_an_ended_attempt_frees_its_room(
    stub: ProvisionerServiceStub,
    provisioner: Provisioner,
    reported: tuple[Bus, asyncio.Queue[Message]],
) -> None:
    bus, heard = reported
    agent = await _connect(stub, Resources(cpu_millis=HUGE, memory_bytes=64 * GIB))
    request = _request(
        f"q-{uuid.uuid4().hex[:8]}", Resources(cpu_millis=HUGE - 1, memory_bytes=GIB)
    )
    await bus.publish(request)
    await _assigned(agent, request)

    # The agent names another node: the session's node is what counts.
    await agent.send(
        pb.ConnectRequest(task_started=pb.TaskStarted(attempt=request.attempt, node_id="liar"))
    )
    started = await _heard(heard, pb.TaskStarted, request.attempt)
    assert started.node_id == agent.node_id
    node = await _node(stub, agent.node_id)
    assert [p.running for p in node.placements if p.attempt == request.attempt] == [True]

    await agent.send(pb.ConnectRequest(task_finished=pb.TaskFinished(attempt=request.attempt)))
    finished = await _heard(heard, pb.TaskFinished, request.attempt)
    assert finished.node_id == agent.node_id
    await _node_until(
        stub, agent.node_id, lambda n: n.reserved.cpu_millis < request.resources.cpu_millis
    )
    node = await _node(stub, agent.node_id)
    assert request.attempt not in [p.attempt for p in node.placements]

    # A report on an attempt not placed here (any more) is fenced out and counted.
    metric = "strata_provisioner_stale_reports_total"
    before = provisioner.sample(metric, report="task_finished")
    await agent.send(pb.ConnectRequest(task_finished=pb.TaskFinished(attempt=request.attempt)))
    async with asyncio.timeout(BOUND):
        while True:
            if provisioner.sample(metric, report="task_finished") > before:
                break
            await asyncio.sleep(0.05)
    await agent.close()


async def test_the_queue_and_placements_survive_a_restart_and_a_bigger_agent_gets_the_waiting_work(
    tmp_path: Path, placed: tuple[Bus, asyncio.Queue[pb.TaskPlaced]]
) -> None:
    bus, _ = placed
    log = tmp_path / "provisioner.log"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    big = _request(queue, Resources(cpu_millis=HUGE * 3, memory_bytes=GIB), "big")
    async with _running(log) as first, grpc.aio.insecure_channel(first.address) as channel:
        stub = ProvisionerServiceStub(channel)
        await bus.publish(big)
        waiting = await _waiting(stub, queue)
        assert [p.attempt for p in waiting] == [big.attempt]

    # The third process starts before the agent leaves the second: a start slower than
    # the node's lease would rightly get the silent node declared lost meanwhile.
    async with _running(log) as third, grpc.aio.insecure_channel(third.address) as channel3:
        async with (
            _running(log) as second,
            grpc.aio.insecure_channel(second.address) as channel,
        ):
            stub = ProvisionerServiceStub(channel)
            waiting = await _waiting(stub, queue)
            assert [p.attempt for p in waiting] == [big.attempt]
            agent = await _connect(stub, Resources(cpu_millis=HUGE * 4, memory_bytes=64 * GIB))
            await _assigned(agent, big)
            await agent.close()

        # The placement is durable: with the provisioner that placed it stopped, the
        # agent registering with another process, not listing the attempt as running,
        # is sent it again.
        stub = ProvisionerServiceStub(channel3)
        again = Agent(stub.Connect(metadata=AGENT), agent.node_id)
        await again.send(
            _registration(agent.node_id, Resources(cpu_millis=HUGE * 4, memory_bytes=64 * GIB))
        )
        assert (await again.receive()).HasField("accepted")
        await _assigned(again, big)
        await again.close()


async def _waiting(stub: ProvisionerServiceStub, queue: str) -> list[pb.PendingTask]:
    """The attempts waiting in ``queue``, once each has a reason."""
    async with asyncio.timeout(BOUND):
        while True:
            reply = await stub.GetQueue(pb.GetQueueRequest(name=queue), metadata=VIEWER)
            pending = list(reply.queue.pending)
            if pending and all(p.waiting_for for p in pending):
                return pending
            await asyncio.sleep(0.05)
