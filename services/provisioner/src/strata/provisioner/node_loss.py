"""Where nodes are declared lost: ``NodeLost`` on ``strata.nodes.events``, one ``TaskLost``
per attempt on ``strata.tasks.events``.

A node is lost when its lease lapses (below) or, for a node a provider of compute
started, as soon as the provider says it is gone (:func:`declare_lost`, called by
the fleet).

A supervised loop looks, every second (or third of a shorter lease), for nodes past their lease
(:mod:`strata.provisioner.domain.lease` decides). In one transaction per round
each such node is marked LOST, its placements are dropped (their reservations
freed) and the events are written to the outbox, so the scheduler hears of every
lost attempt exactly when its placement is gone. From then on a report from
that attempt finds no placement and is ignored and counted
(:mod:`strata.provisioner.reports`); the node's old session, if it speaks again,
is ended, and the agent registers anew and is reconciled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1.provisioner_pb2 import NodeLost, TaskLost
from strata.core.migrations import DbConnection
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.lease import declare, lost_before
from strata.provisioner.store import NodeStore, QueueStore

log = structlog.stdlib.get_logger(__name__)

EVERY = 1.0
"""Most seconds between looks: small next to the lease, so a loss is declared soon after it."""


class NodeLoss:
    """Rounds declaring the lapsed nodes of one provisioner schema lost."""

    def __init__(self, context: ServiceContext, watching_since: datetime, lease: timedelta) -> None:
        self._context = context
        self._watching_since = watching_since
        self._lease = lease
        self._nodes = NodeStore(context.pool, context.schema)

    async def round(self, now: datetime) -> int:
        """Declare lost every node past its lease at ``now``; return how many were."""
        before = lost_before(now, self._watching_since, self._lease)
        if before is None:
            return 0
        async with self._context.pool.acquire() as conn, conn.transaction():
            lapsed = await self._nodes.lapsed(conn, before)
            for node_id, last_seen_at in lapsed:
                loss = declare(node_id, last_seen_at, now, self._lease)
                await declare_lost(self._context, conn, node_id, loss.reason, last_seen_at, now)
        return len(lapsed)


async def declare_lost(
    context: ServiceContext,
    conn: DbConnection,
    node_id: str,
    reason: str,
    last_seen_at: datetime,
    now: datetime,
) -> list[TaskAttemptRef]:
    """In the caller's transaction: mark ``node_id`` lost, drop its placements and publish
    ``TaskLost`` for each with ``NodeLost``; the lost attempts, oldest first.

    The lease watch calls it for a node past its lease; the fleet
    (:mod:`strata.provisioner.fleet`) for a node its provider reports gone, which is lost
    at once rather than a lease later.
    """
    nodes = NodeStore(context.pool, context.schema)
    queue = QueueStore(context.pool, context.schema)
    attempts = await queue.free_node(conn, node_id)
    await nodes.lost(conn, node_id, now)
    seen = Timestamp()
    seen.FromDatetime(last_seen_at)
    await context.outbox.publish(
        conn,
        *(TaskLost(attempt=a, node_id=node_id, reason=reason) for a in attempts),
        NodeLost(node_id=node_id, reason=reason, last_seen_at=seen, lost_attempts=attempts),
    )
    log.warning(
        "node lost",
        node_id=node_id,
        reason=reason,
        lost_attempts=[[a.run_id, a.task_id, a.attempt] for a in attempts],
    )
    return attempts


def watch_leases(lease: timedelta) -> Callable[[ServiceContext], Awaitable[None]]:
    """The node-loss loop for leases of ``lease``, until cancelled; leases count from when
    it started watching."""

    async def run(context: ServiceContext) -> None:
        loss = NodeLoss(context, watching_since=datetime.now(UTC), lease=lease)
        every = min(EVERY, lease.total_seconds() / 3)
        while True:
            await loss.round(datetime.now(UTC))
            await asyncio.sleep(every)

    return run
