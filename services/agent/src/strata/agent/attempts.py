"""The attempts this node runs, and the reports they owe the provisioner.

Reports wait in :class:`Outgoing` until a session writes them, so an attempt
that ends while the stream is down is reported on the next one. Each attempt is
an asyncio task awaiting its worker (:func:`strata.agent.worker.run_in_worker`),
one started ahead when there is one (:mod:`strata.agent.spares`);
a cancellation from the provisioner asks its :class:`~strata.agent.stopping.Stop`
(SIGTERM, SIGKILL after the grace) and the attempt is reported cancelled. An
attempt's code comes from its bundle (:mod:`strata.agent.bundles`), fetched and
checked before a worker gets the job: a bundle that cannot be fetched, does not
match its sha256 or cannot be extracted fails the attempt
(``FAILURE_KIND_BUNDLE_UNAVAILABLE``, the reason in the message) and nothing runs.

Every memory sample of an attempt is also weighed against the node's: once the
attempts together hold more than the node offers them, the one furthest above its
reservation is stopped like an out-of-memory kill and reported
``FAILURE_KIND_EVICTED`` (:mod:`strata.agent.domain.pressure`).
Its stdout and stderr are kept in the blob store (:mod:`strata.agent.output`)
before its end is reported; while it runs, its usage is reported every
``usage_interval``.

The agent leaving (SIGTERM, a rolling restart) is not a cancellation:
:meth:`Attempts.leave` takes no new attempt, lets the running ones finish within
its time and reports them as they end; a worker still running then is killed
and its attempt is NOT reported. The provisioner declares the node lost when its
lease expires, the attempt lost with it, and the scheduler runs it again: it is
retried like any attempt of a lost node, not ended as cancelled by someone who
never asked. The session told the provisioner it leaves before this starts, so
no new assignment should come; one already on its way is left the same way.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from strata.agent.bundles import BundleError, Bundles
from strata.agent.domain.limits import GRACE, Limits
from strata.agent.domain.outcome import (
    Failed,
    Finished,
    Outcome,
    StopKind,
    Stopped,
    Unusable,
    Usage,
)
from strata.agent.domain.pressure import Held, eviction
from strata.agent.domain.usage import Sample, cpu_millis, due
from strata.agent.output import AttemptOutput
from strata.agent.spares import Spares
from strata.agent.stopping import Stop
from strata.agent.worker import job, run_in_worker
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import ResourceUsage
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.core.blobs import BlobStore
from strata.core.task_context import TaskContext

log = structlog.stdlib.get_logger(__name__)

AttemptKey = tuple[str, str, int]


DEFAULT_GRACE = 10.0
"""Seconds a cancelled attempt may take to exit after SIGTERM when the provisioner names none."""
_STOP_KINDS = {
    StopKind.CANCELLED: pb.FAILURE_KIND_CANCELLED,
    StopKind.OUT_OF_MEMORY: pb.FAILURE_KIND_OUT_OF_MEMORY,
    StopKind.TIMEOUT: pb.FAILURE_KIND_TIMEOUT,
    StopKind.EVICTED: pb.FAILURE_KIND_EVICTED,
}


@dataclass(frozen=True)
class Running:
    """One attempt running here: its ref, the task awaiting its worker, its stop, and
    what memory pressure weighs: the memory placement reserved for it and its arrival
    (larger is newer)."""

    ref: TaskAttemptRef
    task: asyncio.Task[None]
    stop: Stop
    reserved_bytes: int
    arrival: int


DEFAULT_USAGE_INTERVAL = 5.0


class UsageReports:
    """Turns one attempt's usage samples into a ``TaskUsage`` report every interval."""

    def __init__(
        self, ref: TaskAttemptRef, node_id: str, outgoing: Outgoing, interval: float
    ) -> None:
        self._ref = ref
        self._node_id = node_id
        self._outgoing = outgoing
        self._interval = interval
        self._last = Sample(time.monotonic(), 0, 0.0)

    def sampled(self, sample: Sample) -> None:
        if not due(self._last, sample, self._interval):
            return
        usage = ResourceUsage(
            cpu_millis=cpu_millis(self._last, sample), memory_bytes=sample.rss_bytes
        )
        self._outgoing.put(
            pb.ConnectRequest(
                task_usage=pb.TaskUsage(attempt=self._ref, node_id=self._node_id, usage=usage)
            )
        )
        self._last = sample


class Outgoing:
    """Messages for the provisioner, in order, kept until a session has written them.

    Once closed (the agent leaves), nothing more is taken and :meth:`next` answers
    None after the last message: the session then ends its side of the stream.
    """

    def __init__(self) -> None:
        self._messages: collections.deque[pb.ConnectRequest] = collections.deque()
        self._waiting = asyncio.Event()
        self.closed = False

    def put(self, message: pb.ConnectRequest) -> None:
        if self.closed:
            return
        message.occurred_at.CopyFrom(_now())
        self._messages.append(message)
        self._waiting.set()

    def close(self) -> None:
        """Take no more messages; those queued are still written."""
        self.closed = True
        self._waiting.set()

    async def next(self) -> pb.ConnectRequest | None:
        """The oldest unsent message (it stays first until :meth:`sent`); None once closed
        and all written."""
        while not self._messages:
            if self.closed:
                return None
            self._waiting.clear()
            await self._waiting.wait()
        return self._messages[0]

    def sent(self) -> None:
        self._messages.popleft()


class Attempts:
    """Runs assigned attempts in workers and queues their reports."""

    def __init__(
        self,
        node_id: str,
        outgoing: Outgoing,
        blobs: BlobStore,
        bundles: Bundles,
        spares: int,
        *,
        memory_bytes: int,
    ) -> None:
        """``spares``: how many workers to keep started ahead; ``memory_bytes``: the memory
        the node offers attempts, which they never hold more of together (one is evicted);
        call from the event loop."""
        self._node_id = node_id
        self._blobs = blobs
        self._bundles = bundles
        self._spares = Spares(spares)
        self._spares.fill()
        self._outgoing = outgoing
        self._running: dict[AttemptKey, Running] = {}
        self._rss: dict[AttemptKey, int] = {}
        """Each running attempt's resident memory at its latest sample."""
        self._arrivals = 0
        self._memory_bytes = memory_bytes
        self._leaving = False
        self.usage_interval = DEFAULT_USAGE_INTERVAL
        """Seconds between TaskUsage reports of a running attempt, as the provisioner says."""

    @property
    def running(self) -> list[TaskAttemptRef]:
        return [entry.ref for entry in self._running.values()]

    async def until_empty(self) -> None:
        """Until no attempt runs here (each ended and its report queued)."""
        while self._running:
            await asyncio.wait([entry.task for entry in self._running.values()])

    def start(self, assignment: pb.TaskAssignment) -> None:
        """Run ``assignment`` unless this very attempt already runs (a re-sent assignment)."""
        key = _key(assignment.attempt)
        if key in self._running:
            return
        if self._leaving:
            log.info("the agent is leaving: assignment left to node loss", attempt=list(key))
            return
        ref = TaskAttemptRef()
        ref.CopyFrom(assignment.attempt)
        stop = Stop()
        task = asyncio.create_task(self._run(ref, assignment, stop), name=f"attempt {key}")
        self._arrivals += 1
        reserved = assignment.reserved.memory_bytes
        self._running[key] = Running(ref, task, stop, reserved, self._arrivals)

    def cancel(self, cancellation: pb.TaskCancellation) -> None:
        """Stop the attempt named (SIGTERM, SIGKILL after the grace), to be reported
        cancelled; an attempt not running here is none of this node's business."""
        entry = self._running.get(_key(cancellation.attempt))
        if entry is None:
            return
        grace = cancellation.grace_period.ToTimedelta().total_seconds()
        if not cancellation.HasField("grace_period"):
            grace = DEFAULT_GRACE
        reason = cancellation.reason or "cancelled by the provisioner"
        entry.stop.ask(StopKind.CANCELLED, reason, grace)
        log.info("attempt cancelled", attempt=list(_key(entry.ref)), reason=reason, grace=grace)

    async def leave(self, within: float) -> None:
        """Take no new attempt; give the running ones ``within`` seconds to end (each
        reported as it ends), then kill the workers of the rest, reporting nothing for
        them: node loss gets them run again."""
        self._leaving = True
        closing = asyncio.ensure_future(self._spares.close())
        tasks = [entry.task for entry in self._running.values()]
        log.info("the agent is leaving: no new attempts", running=len(tasks), within=within)
        if tasks and within > 0:
            await asyncio.wait(tasks, timeout=within)
        left = [task for task in tasks if not task.done()]
        if left:
            log.warning(
                "the agent leaves attempts still running to node loss",
                attempts=[list(_key(entry.ref)) for entry in self._running.values()],
            )
        for task in left:
            task.cancel()
        await asyncio.gather(*tasks, closing, return_exceptions=True)

    async def _run(self, ref: TaskAttemptRef, assignment: pb.TaskAssignment, stop: Stop) -> None:
        args = json_format.MessageToDict(assignment.args)
        upstream = {
            task_id: json_format.MessageToDict(outputs)
            for task_id, outputs in assignment.upstream_outputs.items()
        }
        self._outgoing.put(
            pb.ConnectRequest(task_started=pb.TaskStarted(attempt=ref, node_id=self._node_id))
        )
        log.info("attempt started", attempt=list(_key(ref)), entrypoint=assignment.entrypoint)
        output = AttemptOutput(self._blobs, ref)
        uploading = asyncio.create_task(output.upload_while_running())
        usage = UsageReports(ref, self._node_id, self._outgoing, self.usage_interval)

        def sampled(sample: Sample) -> None:
            usage.sampled(sample)
            self._rss[_key(ref)] = sample.rss_bytes
            self._relieve_pressure()

        try:
            code = await self._bundle(assignment)
            if isinstance(code, Unusable):
                outcome: Outcome | Unusable = code
            else:
                context = TaskContext(
                    ref.run_id, assignment.workflow_name, ref.task_id, ref.attempt, self._node_id
                )
                worker = await self._spares.start(
                    job(assignment.entrypoint, args, upstream, output.folder, code, context)
                )
                outcome = await run_in_worker(worker, stop, _limits(assignment), sampled)
        finally:
            self._running.pop(_key(ref), None)
            self._rss.pop(_key(ref), None)
            uploading.cancel()
            await asyncio.gather(uploading, return_exceptions=True)
            await output.close()
        self._outgoing.put(report(ref, self._node_id, outcome))
        log.info("attempt ended", attempt=list(_key(ref)), outcome=type(outcome).__name__)

    def _relieve_pressure(self) -> None:
        """Evict the attempt :func:`~strata.agent.domain.pressure.eviction` names, if the
        attempts here together hold more memory than the node may give them."""
        held = [
            Held(key, self._rss.get(key, 0), entry.reserved_bytes, entry.arrival, entry.stop.asked)
            for key, entry in self._running.items()
        ]
        chosen = eviction(self._memory_bytes, held)
        if chosen is None:
            return
        self._running[chosen.key].stop.ask(
            StopKind.EVICTED, chosen.message, GRACE[StopKind.EVICTED]
        )
        log.warning("attempt evicted", attempt=list(chosen.key), reason=chosen.message)

    async def _bundle(self, assignment: pb.TaskAssignment) -> Path | Unusable | None:
        """The folder of the assignment's bundle (None: it names none), or why it is unusable."""
        if not assignment.bundle.sha256:
            return None
        try:
            return await self._bundles.folder(assignment.bundle)
        except BundleError as exc:
            log.warning("bundle unusable", sha256=assignment.bundle.sha256, reason=str(exc))
            return Unusable(str(exc))


def report(ref: TaskAttemptRef, node_id: str, outcome: Outcome | Unusable) -> pb.ConnectRequest:
    """The report of an ended attempt: finished with its outputs, or failed with the reason."""
    if isinstance(outcome, Unusable):
        return pb.ConnectRequest(
            task_failed=pb.TaskFailed(
                attempt=ref,
                node_id=node_id,
                kind=pb.FAILURE_KIND_BUNDLE_UNAVAILABLE,
                message=outcome.reason,
            )
        )
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
                mean_memory_bytes=outcome.usage.mean_rss_bytes,
            )
        )
    if isinstance(outcome, Stopped):
        return pb.ConnectRequest(
            task_failed=pb.TaskFailed(
                attempt=ref,
                node_id=node_id,
                kind=_STOP_KINDS[outcome.kind],
                message=outcome.message,
                peak_usage=_peak(outcome.usage),
                mean_memory_bytes=outcome.usage.mean_rss_bytes,
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
        mean_memory_bytes=outcome.usage.mean_rss_bytes,
    )


def _limits(assignment: pb.TaskAssignment) -> Limits:
    """The attempt's memory limit (what the task asked for) and its timeout, if any."""
    timeout = assignment.timeout.ToTimedelta().total_seconds()
    return Limits(
        memory_bytes=assignment.limits.memory_bytes,
        timeout_seconds=timeout if assignment.HasField("timeout") and timeout > 0 else None,
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
