"""Where nodes are drained: the one path of ``DrainNode``, the fleet's scale-down and an
agent's ``AgentLeaving`` (:mod:`strata.provisioner.domain.draining` says what a drain
does), and where a drained node is announced (``NodeDrained`` on ``strata.nodes.events``).

A drain runs under the placement round's lock: a round that read the node as READY
commits before the drain, and every round after it reads the node DRAINING, so
nothing is placed on it from the moment the drain returns. The node's state, why it
drains and whether the drain is kept are in its row, so they outlive a provisioner
restart; the node's Connect session tells the agent (``DrainRequest``). When the
last attempt on a DRAINING node ends, the transaction dropping its placement makes
it DRAINED and publishes ``NodeDrained`` (:func:`settle`).
"""

from __future__ import annotations

import structlog

from strata.api.provisioner.v1.provisioner_pb2 import NodeDrained, NodeState
from strata.core.migrations import DbConnection
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.draining import Drain, drain
from strata.provisioner.store import NodeStore, QueueStore

log = structlog.stdlib.get_logger(__name__)


class Drains:
    """Drains of the nodes of one provisioner schema."""

    def __init__(self, context: ServiceContext) -> None:
        self._context = context
        self._nodes = NodeStore(context.pool, context.schema)
        self._queue = QueueStore(context.pool, context.schema)

    async def drain(
        self, node_id: str, how: Drain, *, only_if_idle: bool = False
    ) -> NodeState.ValueType | None:
        """Drain ``node_id``; its state after (DRAINING or DRAINED), None when no such
        node is registered, or, ``only_if_idle``, when it has placements (it is left as
        it was). Raises :class:`~strata.provisioner.domain.draining.NodeGoneError` for a node
        whose stream closed."""
        async with self._context.pool.acquire() as conn, conn.transaction():
            await self._queue.lock_round(conn)
            found = await self._nodes.lock_drain(conn, node_id)
            if found is None or (only_if_idle and found.placements):
                return None
            step = drain(found.state, found.placements)
            await self._nodes.drained(conn, node_id, step.state, how)
            if step.drained_now:
                await _announce(self._context, conn, node_id, how.reason)
        log.info("node draining", node_id=node_id, reason=how.reason, state=step.state)
        return step.state


async def settle(context: ServiceContext, conn: DbConnection, node_id: str) -> None:
    """In the caller's transaction, once a placement on ``node_id`` was dropped: a
    DRAINING node with nothing left on it is DRAINED, and announced."""
    reason = await NodeStore(context.pool, context.schema).settle_drain(conn, node_id)
    if reason is not None:
        await _announce(context, conn, node_id, reason)


async def _announce(context: ServiceContext, conn: DbConnection, node_id: str, reason: str) -> None:
    await context.outbox.publish(conn, NodeDrained(node_id=node_id, reason=reason))
    log.info("node drained", node_id=node_id, reason=reason)
