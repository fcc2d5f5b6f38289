"""Where requested attempts enter the provisioner: ``strata.tasks.requested``, group
"provisioner".

Each ``TaskRequested`` is queued in the transaction that claims its event id in
the inbox, so a redelivered request queues nothing twice; once that commits, the
placement loop (:mod:`strata.provisioner.placing`) is woken to place it. A ``TaskCancelRequested``
(same topic and key, so it never overtakes its request) takes a queued attempt
out of the queue and reports it cancelled (``TaskFailed``, FAILURE_KIND_CANCELLED,
through the outbox), or marks a placed one for its agent's Connect session to
stop (:mod:`strata.provisioner.domain.cancellation` decides), waking that
session to send the cancellation.
"""

from __future__ import annotations

import structlog

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.provisioner.v1.provisioner_pb2 import FAILURE_KIND_CANCELLED, TaskFailed
from strata.api.scheduler.v1.scheduler_pb2 import TaskCancelRequested, TaskRequested
from strata.core.errors import InvalidArgumentError
from strata.core.inbox import claim
from strata.core.runtime import ServiceContext
from strata.core.runtime.spec import Handlers
from strata.core.topics import TASKS_REQUESTED
from strata.provisioner.domain.cancellation import Step, reason_or_default, step
from strata.provisioner.store import QueueStore
from strata.provisioner.wakeups import Wakeups

log = structlog.stdlib.get_logger(__name__)

GROUP = "provisioner"
INBOX_CONSUMER = "task-requests"
"""The inbox name under which task requests are claimed."""


def task_requests(wakeups: Wakeups) -> Handlers:
    """The handlers of ``strata.tasks.requested``, waking placement and sessions through
    ``wakeups``."""

    def register(context: ServiceContext) -> None:
        register_task_requests(context, wakeups)

    return register


def register_task_requests(context: ServiceContext, wakeups: Wakeups) -> None:
    """Queue the attempts requested on ``strata.tasks.requested``, and stop those whose
    cancellation is requested there."""
    queue = QueueStore(context.pool, context.schema)
    requests = context.bus.consumer(TASKS_REQUESTED, group=GROUP)

    @requests.on(TaskRequested)
    async def on_requested(event: TaskRequested, envelope: Envelope) -> None:
        _check(event)
        async with context.pool.acquire() as conn, conn.transaction():
            if not await claim(conn, context.schema, envelope.event_id, consumer=INBOX_CONSUMER):
                return
            queued = await queue.enqueue(conn, event)
        if queued:
            wakeups.queue_changed()
            log.info(
                "attempt queued",
                run_id=event.attempt.run_id,
                task_id=event.attempt.task_id,
                attempt=event.attempt.attempt,
            )

    @requests.on(TaskCancelRequested)
    async def on_cancel_requested(event: TaskCancelRequested, envelope: Envelope) -> None:
        a = event.attempt
        if not a.run_id or not a.task_id or a.attempt < 1:
            raise InvalidArgumentError("attempt", "must name the run, the task and the attempt")
        key = (a.run_id, a.task_id, a.attempt)
        reason = reason_or_default(event.reason)
        node_id = None
        async with context.pool.acquire() as conn, conn.transaction():
            if not await claim(conn, context.schema, envelope.event_id, consumer=INBOX_CONSUMER):
                return
            where = await queue.locate(conn, *key)
            taken = step(where)
            if taken is Step.REPORT_CANCELLED:
                await queue.dequeue(conn, *key)
                await context.outbox.publish(
                    conn, TaskFailed(attempt=a, kind=FAILURE_KIND_CANCELLED, message=reason)
                )
            elif taken is Step.TELL_THE_AGENT:
                node_id = await queue.ask_to_stop(conn, *key, reason)
        if node_id is not None:
            wakeups.placed_on([node_id])
        log.info("cancellation requested", attempt=list(key), where=where.value, step=taken.value)


def _check(event: TaskRequested) -> None:
    """A request placement cannot act on goes to the dead-letter topic with the field named."""
    if not event.attempt.run_id or not event.attempt.task_id:
        raise InvalidArgumentError("attempt", "must name the run and the task")
    if event.attempt.attempt < 1:
        raise InvalidArgumentError("attempt.attempt", "must be 1 or more (the fencing number)")
    r = event.resources
    for name, value in (
        ("cpu_millis", r.cpu_millis),
        ("memory_bytes", r.memory_bytes),
        ("gpus", r.gpus),
    ):
        if value < 0:
            raise InvalidArgumentError(f"resources.{name}", f"must be 0 or more, got {value}")
