"""Where attempts get a node: one placement round, in one transaction.

The round reads the READY nodes heard from within their lease (with what their
placements reserve) and the waiting attempts, asks
:func:`strata.provisioner.domain.placement.place` what goes where, then moves
each placed attempt from the queue to its node together with the ``TaskPlaced``
event announcing it (outbox), and records why the others wait. The agent's
Connect session sends the assignment from the stored placement, so nothing
placed is lost if the provisioner stops before the agent got it.

The loop runs a round when :class:`~strata.provisioner.wakeups.Wakeups` says the
queue changed (an attempt queued, room freed, a node registered), or after the
poll at the latest; once a round commits, the sessions of the nodes that got
attempts are woken to send them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from strata.api.provisioner.v1.provisioner_pb2 import NODE_STATE_READY, TaskPlaced
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.lease import alive_since
from strata.provisioner.domain.placement import Attempt, place
from strata.provisioner.store import NodeStore, QueueStore
from strata.provisioner.wakeups import Wakeups

log = structlog.stdlib.get_logger(__name__)

MAX_NODES = 10_000
"""Most nodes one round considers; far above what one provisioner serves."""


class Placement:
    """Placement rounds over the nodes and queue of one provisioner schema."""

    def __init__(self, context: ServiceContext, lease: timedelta) -> None:
        self._context = context
        self._lease = lease
        self._nodes = NodeStore(context.pool, context.schema)
        self._queue = QueueStore(context.pool, context.schema)

    async def round(self) -> set[str]:
        """Place what fits now; return the nodes that got attempts (once committed)."""
        async with self._context.pool.acquire() as conn, conn.transaction():
            await self._queue.lock_round(conn)
            waiting = await self._queue.waiting(conn)
            if not waiting:
                return set()
            nodes = await self._nodes.list(
                [NODE_STATE_READY],
                after="",
                limit=MAX_NODES,
                seen_since=alive_since(datetime.now(UTC), self._lease),
                conn=conn,
            )
            requests = {_key(q.attempt): q.request for q in waiting}
            plan = place([n.node for n in nodes], [q.attempt for q in waiting])
            for placed in plan.placed:
                request = requests[_key(placed.attempt)]
                await self._queue.place(conn, placed, request)
                await self._context.outbox.publish(
                    conn,
                    TaskPlaced(
                        attempt=request.attempt,
                        node_id=placed.node_id,
                        limits=request.resources,
                        reserved=request.resources,
                    ),
                )
                log.info(
                    "attempt placed",
                    run_id=placed.attempt.run_id,
                    task_id=placed.attempt.task_id,
                    attempt=placed.attempt.attempt,
                    node_id=placed.node_id,
                    warm=placed.warm,
                )
            for waits in plan.waiting:
                await self._queue.wait(conn, waits.attempt, waits.reason)
        return {placed.node_id for placed in plan.placed}


def _key(attempt: Attempt) -> tuple[str, str, int]:
    return (attempt.run_id, attempt.task_id, attempt.attempt)


def placement_loop(
    wakeups: Wakeups, poll: float, lease: timedelta
) -> Callable[[ServiceContext], Awaitable[None]]:
    """The placement loop, until cancelled: a round each time the queue changes, or
    every ``poll`` seconds at the latest; each placement wakes its node's session.
    Only nodes heard from within ``lease`` get attempts."""

    async def run(context: ServiceContext) -> None:
        placement = Placement(context, lease)
        while True:
            wakeups.placed_on(await placement.round())
            await wakeups.until_queue_changed(poll)

    return run
