"""The attempts this node runs, and the reports they owe the provisioner.

Reports wait in :class:`Outgoing` until a session writes them, so an attempt
that ends while the stream is down is reported on the next one. Each attempt is
an asyncio task awaiting its worker (:func:`strata.agent.worker.run_in_worker`);
cancelling it kills the worker.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

import structlog
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from strata.agent.domain.outcome import Failed, Finished, Outcome, Usage
from strata.agent.worker import run_in_worker
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import ResourceUsage
from strata.api.provisioner.v1 import provisioner_pb2 as pb

log = structlog.stdlib.get_logger(__name__)

AttemptKey = tuple[str, str, int]


class Outgoing:
    """Messages for the provisioner, in order, kept until a session has written them."""

    def __init__(self) -> None:
        self._messages: collections.deque[pb.ConnectRequest] = collections.deque()
        self._waiting = asyncio.Event()

    def put(self, message: pb.ConnectRequest) -> None:
        message.occurred_at.CopyFrom(_now())
        self._messages.append(message)
        self._waiting.set()

    async def next(self) -> pb.ConnectRequest:
        """The oldest unsent message (it stays first until :meth:`sent`)."""
        while not self._messages:
            self._waiting.clear()
            await self._waiting.wait()
        return self._messages[0]

    def sent(self) -> None:
        self._messages.popleft()


class Attempts:
    """Runs assigned attempts in workers and queues their reports."""

    def __init__(self, node_id: str, code_path: Sequence[str], outgoing: Outgoing) -> None:
        self._node_id = node_id
        self._code_path = tuple(code_path)
        self._outgoing = outgoing
        self._running: dict[AttemptKey, tuple[TaskAttemptRef, asyncio.Task[None]]] = {}

    @property
    def running(self) -> list[TaskAttemptRef]:
        return [ref for ref, _ in self._running.values()]

    def start(self, assignment: pb.TaskAssignment) -> None:
        """Run ``assignment`` unless this very attempt already runs (a re-sent assignment)."""
        key = _key(assignment.attempt)
        if key in self._running:
            return
        ref = TaskAttemptRef()
        ref.CopyFrom(assignment.attempt)
        task = asyncio.create_task(self._run(ref, assignment), name=f"attempt {key}")
        self._running[key] = (ref, task)

    def cancel(self, cancellation: pb.TaskCancellation) -> None:
        """Stop the attempt named; an attempt not running here is none of this node's business."""
        entry = self._running.get(_key(cancellation.attempt))
        if entry is not None:
            entry[1].cancel(cancellation.reason or "cancelled by the provisioner")

    async def stop(self) -> None:
        """Kill every worker (the agent is stopping)."""
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, ref: TaskAttemptRef, assignment: pb.TaskAssignment) -> None:
        args = json_format.MessageToDict(assignment.args)
        upstream = {
            task_id: json_format.MessageToDict(outputs)
            for task_id, outputs in assignment.upstream_outputs.items()
        }
        self._outgoing.put(
            pb.ConnectRequest(task_started=pb.TaskStarted(attempt=ref, node_id=self._node_id))
        )
        log.info("attempt started", attempt=list(_key(ref)), entrypoint=assignment.entrypoint)
        try:
            outcome = await run_in_worker(assignment.entrypoint, args, upstream, self._code_path)
        except asyncio.CancelledError as cancelled:
            reason = str(cancelled.args[0]) if cancelled.args else "the agent is stopping"
            self._outgoing.put(
                pb.ConnectRequest(
                    task_failed=pb.TaskFailed(
                        attempt=ref,
                        node_id=self._node_id,
                        kind=pb.FAILURE_KIND_CANCELLED,
                        message=reason,
                    )
                )
            )
            raise
        finally:
            self._running.pop(_key(ref), None)
        self._outgoing.put(report(ref, self._node_id, outcome))
        log.info("attempt ended", attempt=list(_key(ref)), outcome=type(outcome).__name__)


def report(ref: TaskAttemptRef, node_id: str, outcome: Outcome) -> pb.ConnectRequest:
    """The report of an ended attempt: finished with its outputs, or failed with the reason."""
    if isinstance(outcome, Finished):
        outputs = Struct()
        outputs.update(outcome.outputs)
        return pb.ConnectRequest(
            task_finished=pb.TaskFinished(
                attempt=ref,
                node_id=node_id,
                outputs=outputs,
                peak_usage=_peak(outcome.usage),
                duration=_duration(outcome.usage.wall_seconds),
            )
        )
    return pb.ConnectRequest(task_failed=_failed(ref, node_id, outcome))


def _failed(ref: TaskAttemptRef, node_id: str, outcome: Failed) -> pb.TaskFailed:
    return pb.TaskFailed(
        attempt=ref,
        node_id=node_id,
        kind=pb.FAILURE_KIND_ERROR,
        message=outcome.summary,
        exit_code=outcome.exit_code,
        peak_usage=_peak(outcome.usage),
        traceback=outcome.traceback,
    )


def _peak(usage: Usage) -> ResourceUsage:
    """Peak memory, and CPU as the average over the attempt (a process has no peak CPU)."""
    return ResourceUsage(cpu_millis=usage.average_cpu_millis, memory_bytes=usage.peak_rss_bytes)


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now


def _key(ref: TaskAttemptRef) -> AttemptKey:
    return (ref.run_id, ref.task_id, ref.attempt)
