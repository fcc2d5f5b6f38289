"""Strata's side: apply the workflows, trigger runs over gRPC, time them off the events.

A run's time is from just before ``TriggerRun`` is sent to the moment the observer
receives the run's ``RunStateChanged`` into SUCCEEDED, what ``workflow run
--follow`` would wait for. Any other end is an error: a benchmark of failing runs
measures nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc

from bench.dispatch.analysis import Burst, burst
from bench.dispatch.cluster import Cluster
from bench.dispatch.observer import Observer, Seen
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub

RUN_BOUND = 600.0
"""Seconds one run (or one burst) may take before the benchmark gives up on it."""


@dataclass(frozen=True)
class Finished:
    """One run: trigger to SUCCEEDED seen, and every event of it."""

    run_id: str
    seconds: float
    ended_ns: int
    """When the observer received the run's end."""
    events: list[Seen]


class StrataSide:
    """Runs of applied workflows on one :class:`Cluster`, watched by one :class:`Observer`."""

    def __init__(self, cluster: Cluster, channel: grpc.aio.Channel, observer: Observer) -> None:
        self._cluster = cluster
        self._stub = SchedulerServiceStub(channel)
        self._observer = observer
        self._tasks: dict[str, int] = {}

    async def apply(self, spec: spb.WorkflowSpec) -> None:
        self._tasks[spec.name] = len(spec.tasks)
        await self._stub.ApplyWorkflow(
            spb.ApplyWorkflowRequest(spec=spec), metadata=self._cluster.metadata
        )

    async def run(self, workflow: str) -> Finished:
        """Trigger one run of ``workflow`` and wait until it SUCCEEDED."""
        async with asyncio.timeout(RUN_BOUND):
            return await self._run(workflow)

    async def burst(self, workflow: str, runs: int) -> tuple[Burst, float]:
        """Trigger ``runs`` runs at once; the rate of their task state transitions, and the
        seconds from the first trigger to the last run's end."""
        started = time.time_ns()
        async with asyncio.timeout(RUN_BOUND):
            done = await asyncio.gather(*(self._run(workflow) for _ in range(runs)))
        changes = [
            seen.occurred_ns
            for run in done
            for seen in run.events
            if seen.kind == "TaskStateChanged"
        ]
        return burst(changes), (max(run.ended_ns for run in done) - started) * 1e-9

    async def _run(self, workflow: str) -> Finished:
        triggered = time.time_ns()
        reply = await self._stub.TriggerRun(
            spb.TriggerRunRequest(workflow_name=workflow, request_id=str(uuid.uuid4())),
            metadata=self._cluster.metadata,
        )
        run_id = reply.run.run_id
        end = await self._observer.ended(run_id)
        if end.state != spb.RUN_STATE_SUCCEEDED:
            raise RuntimeError(await self._why(run_id, workflow))
        events = await self._every_report(run_id, self._tasks[workflow])
        return Finished(run_id, (end.received_ns - triggered) * 1e-9, end.received_ns, events)

    async def _why(self, run_id: str, workflow: str) -> str:
        """The run's end and the first task messages, to say why a run did not succeed."""
        reply = await self._stub.GetRun(
            spb.GetRunRequest(run_id=run_id), metadata=self._cluster.metadata
        )
        run = reply.run
        messages = [f"{t.task_id}: {t.message}" for t in run.tasks if t.message][:3]
        return (
            f"run {run_id} of {workflow!r} ended {spb.RunState.Name(run.state)}, not "
            f"SUCCEEDED: {run.message or 'no message'}; "
            + ("; ".join(messages) or "no task said why")
        )

    async def _every_report(self, run_id: str, tasks: int) -> list[Seen]:
        """The run's events once every task's TaskFinished is in: task reports travel on
        another topic than the run's end, so they may be read a moment after it."""
        while True:
            events = self._observer.events(run_id)
            if sum(seen.kind == "TaskFinished" for seen in events) >= tasks:
                return events
            await asyncio.sleep(0.01)
