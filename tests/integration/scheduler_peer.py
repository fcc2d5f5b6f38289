"""The provisioner and agents as a scheduler test plays them, and the scheduler it talks to.

``async with playing_cluster("runs-test") as cluster`` consumes the scheduler's
``TaskRequested`` and ``TaskCancelRequested`` (a group of its own, so it never
takes a real provisioner's share) and answers on ``strata.tasks.events`` as a
provisioner and its agents would. ``async with scheduler_client(address)`` is a
stub on a plain channel; calls carry ``DEV``, the token ``TOKENS`` gives the
scheduler processes these tests start.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from strata.core.topics import TASKS_REQUESTED

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
DEV = (("authorization", "Bearer dev-token"),)


@dataclass(frozen=True)
class Scheduler:
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


class Cluster:
    """The provisioner and its agents, as the scheduler sees them through Kafka."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._requests: dict[str, asyncio.Queue[pb.TaskRequested]] = defaultdict(asyncio.Queue)
        self._stops: dict[str, asyncio.Queue[pb.TaskCancelRequested]] = defaultdict(asyncio.Queue)

    def heard(self, request: pb.TaskRequested) -> None:
        self._requests[request.attempt.run_id].put_nowait(request)

    def stop_heard(self, request: pb.TaskCancelRequested) -> None:
        self._stops[request.attempt.run_id].put_nowait(request)

    async def next_request(self, run_id: str) -> pb.TaskRequested:
        async with asyncio.timeout(BOUND):
            return await self._requests[run_id].get()

    async def next_stop(self, run_id: str) -> pb.TaskCancelRequested:
        async with asyncio.timeout(BOUND):
            return await self._stops[run_id].get()

    def pending(self, run_id: str) -> int:
        return self._requests[run_id].qsize()

    async def start(self, ref: TaskAttemptRef) -> None:
        await self.bus.publish(prov.TaskPlaced(attempt=ref, node_id="node-1"))
        await self.bus.publish(prov.TaskStarted(attempt=ref, node_id="node-1"))

    async def finish(self, ref: TaskAttemptRef, outputs: dict[str, Any] | None = None) -> None:
        struct = json_format.ParseDict(outputs or {}, Struct())
        await self.bus.publish(prov.TaskFinished(attempt=ref, node_id="node-1", outputs=struct))

    async def fail(self, ref: TaskAttemptRef, message: str) -> None:
        await self.bus.publish(
            prov.TaskFailed(
                attempt=ref, node_id="node-1", kind=prov.FAILURE_KIND_ERROR, message=message
            )
        )


@asynccontextmanager
async def playing_cluster(name: str) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` hearing the scheduler's requests under a group of its own."""
    bus = Bus(name, kafka=load(KafkaSettings))
    cluster = Cluster(bus)
    requests = bus.consumer(TASKS_REQUESTED, group=f"{name}-{uuid.uuid4().hex[:8]}")

    @requests.on(pb.TaskRequested)
    async def on_requested(event: pb.TaskRequested, envelope: Envelope) -> None:
        cluster.heard(event)

    @requests.on(pb.TaskCancelRequested)
    async def on_stop(event: pb.TaskCancelRequested, envelope: Envelope) -> None:
        cluster.stop_heard(event)

    async with bus:
        yield cluster


@asynccontextmanager
async def scheduler_client(address: str) -> AsyncIterator[SchedulerServiceStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield SchedulerServiceStub(channel)


def name(prefix: str) -> str:
    """A workflow name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def task(task_id: str, *deps: str, **fields: Any) -> pb.TaskSpec:
    return pb.TaskSpec(
        task_id=task_id,
        entrypoint=f"pipeline.tasks:{task_id.replace('-', '_')}",
        depends_on=deps,
        **fields,
    )


async def run_until(
    client: SchedulerServiceStub, run_id: str, state: pb.RunState.ValueType
) -> pb.Run:
    """Poll GetRun until the run is in ``state``."""
    async with asyncio.timeout(BOUND):
        while True:
            run: pb.Run = (await client.GetRun(pb.GetRunRequest(run_id=run_id), metadata=DEV)).run
            if run.state == state:
                return run
            await asyncio.sleep(0.1)


async def apply_and_trigger(
    client: SchedulerServiceStub, spec: pb.WorkflowSpec, request_id: str = ""
) -> pb.Run:
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    reply = await client.TriggerRun(
        pb.TriggerRunRequest(workflow_name=spec.name, request_id=request_id), metadata=DEV
    )
    run: pb.Run = reply.run
    return run


def states(run: pb.Run) -> dict[str, str]:
    """Each task's state by task id, without the enum's prefix."""
    return {t.task_id: pb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in run.tasks}
