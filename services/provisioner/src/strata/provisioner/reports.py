"""Where agents' reports on their attempts leave the provisioner: ``strata.tasks.events``.

A report (started, finished, failed, usage) arrives on the agent's Connect
stream. In one transaction the attempt's placement is locked, the report's
effect decided by :mod:`strata.provisioner.domain.reports` (stale reports change
nothing and are counted), the placement marked running or dropped (its
reservation freed; a draining node left empty is DRAINED,
:func:`strata.provisioner.draining.settle`), and the event published through the
outbox with the node id of the session it came on, never the one the agent wrote.
An attempt that ended frees room, so the placement loop is woken once that commits.

An attempt that finished, was stopped for going past its memory limit, or was
evicted for node memory pressure is also recorded in the task's usage history (peak
usage under the memory limit it was given, and the memory it held on average), in
the same transaction: placement sizes the next attempts of the task from it (a
report without measured usage teaches nothing). Only running out of memory grows the
next limit: an evicted attempt stayed under its own, its neighbours' peaks met, and
what it held until then is what it needs so far (the next attempt reserves from
peaks, :mod:`strata.provisioner.domain.sizing`). Other failures (an error, a
timeout, a cancellation) stopped the attempt part-way for reasons of its own, so
their peak says nothing of what the task needs, and they are not recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from prometheus_client import Counter

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.reports import Effect, effect
from strata.provisioner.draining import settle
from strata.provisioner.store import QueueStore, UsageHistory
from strata.provisioner.wakeups import Wakeups

log = structlog.stdlib.get_logger(__name__)

Report = pb.TaskStarted | pb.TaskFinished | pb.TaskFailed | pb.TaskUsage


class Reports:
    """Applies and announces the reports of agents connected to this provisioner."""

    def __init__(self, context: ServiceContext, wakeups: Wakeups) -> None:
        self._context = context
        self._wakeups = wakeups
        self._queue = QueueStore(context.pool, context.schema)
        self._history = UsageHistory(context.pool, context.schema)
        self._stale = Counter(
            "strata_provisioner_stale_reports",
            "Agent reports about attempts not placed on the reporting node, by report.",
            ["report"],
            registry=context.metrics.registry,
        )

    async def cancel_unassigned(self, node_id: str, attempt: TaskAttemptRef, reason: str) -> None:
        """Report cancelled an attempt placed on ``node_id`` whose agent never got it: no
        agent will report on it, so the provisioner does."""
        key = (attempt.run_id, attempt.task_id, attempt.attempt)
        async with self._context.pool.acquire() as conn, conn.transaction():
            if await self._queue.lock_placement(conn, *key) != node_id:
                return
            await self._queue.ended(conn, *key)
            await settle(self._context, conn, node_id)
            await self._context.outbox.publish(
                conn,
                pb.TaskFailed(
                    attempt=attempt,
                    node_id=node_id,
                    kind=pb.FAILURE_KIND_CANCELLED,
                    message=reason,
                ),
            )
        self._wakeups.queue_changed()

    def ignore(self, node_id: str, message: pb.ConnectRequest) -> None:
        """Count ``message`` (a report) from a session that is over (its node was lost)."""
        kind = message.WhichOneof("message")
        assert kind is not None, "the caller passes reports only"
        attempt = getattr(message, kind).attempt
        self._stale.labels(report=kind).inc()
        log.info(
            "report from a lost session ignored",
            node_id=node_id,
            report=kind,
            attempt=[attempt.run_id, attempt.task_id, attempt.attempt],
        )

    async def apply(self, node_id: str, message: pb.ConnectRequest) -> None:
        """Apply ``message`` (one with a report set) from the agent of ``node_id``."""
        kind = message.WhichOneof("message")
        assert kind is not None, "the caller passes reports only"
        report: Report = type(getattr(message, kind))()
        report.CopyFrom(getattr(message, kind))
        report.node_id = node_id
        attempt = report.attempt
        key = (attempt.run_id, attempt.task_id, attempt.attempt)
        async with self._context.pool.acquire() as conn, conn.transaction():
            placed_on = await self._queue.lock_placement(conn, *key)
            outcome = effect(kind, placed_on, node_id)
            if outcome is Effect.STALE:
                self._stale.labels(report=kind).inc()
                log.info("stale report ignored", node_id=node_id, report=kind, attempt=list(key))
                return
            if outcome is Effect.STARTED:
                await self._queue.started(conn, *key)
            elif outcome is Effect.ENDED:
                if _measured_need(report):
                    assert isinstance(report, pb.TaskFinished | pb.TaskFailed)
                    await self._history.record(
                        conn,
                        attempt,
                        report.peak_usage,
                        out_of_memory=_out_of_memory(report),
                        now=datetime.now(UTC),
                        mean_memory_bytes=report.mean_memory_bytes,
                        evicted=_evicted(report),
                    )
                await self._queue.ended(conn, *key)
                await settle(self._context, conn, node_id)
            await self._context.outbox.publish(conn, report)
        if outcome is Effect.ENDED:
            self._wakeups.queue_changed()


_MEASURED_FAILURES = frozenset({pb.FAILURE_KIND_OUT_OF_MEMORY, pb.FAILURE_KIND_EVICTED})


def _measured_need(report: Report) -> bool:
    """Whether the report's peak usage says what the task needs: it was measured, and
    the attempt finished, went past its memory limit (it needs more than that), or was
    evicted (it needed that much until then)."""
    if not isinstance(report, pb.TaskFinished | pb.TaskFailed) or not report.HasField("peak_usage"):
        return False
    if isinstance(report, pb.TaskFinished):
        return True
    return report.kind in _MEASURED_FAILURES


def _out_of_memory(report: Report) -> bool:
    """Whether the attempt ran out of its own memory limit: the next one gets more."""
    return isinstance(report, pb.TaskFailed) and report.kind == pb.FAILURE_KIND_OUT_OF_MEMORY


def _evicted(report: Report) -> bool:
    """Whether the attempt's node evicted it: the next one reserves from peaks."""
    return isinstance(report, pb.TaskFailed) and report.kind == pb.FAILURE_KIND_EVICTED
