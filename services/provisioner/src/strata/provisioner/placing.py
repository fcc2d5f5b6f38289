"""Where attempts get a node: one placement round, in one transaction.

The round reads the READY nodes heard from within their lease (with what their
placements reserve), the waiting attempts, the queues' quotas, weights and per-user
caps with what each queue uses now, and the usage history of the tasks waiting (one
query). Each attempt is sized from its task's history
(:func:`strata.provisioner.domain.sizing.size_attempt`: its memory limit raised
after an out-of-memory attempt, and what placement reserves learned from past peaks,
or past mean memory when the sizing policy says so, and how long it will run), then
:func:`strata.provisioner.domain.placement.place` says what goes where. Every placed
attempt moves from the queue to its node together with the ``TaskPlaced`` events
announcing them (outbox), and the others record why they wait, each in one set-based
statement: a round costs a few round trips whatever its size. The agent's Connect
session sends the assignment from the stored placement, so nothing placed is lost if
the provisioner stops before the agent got it.

The loop runs a round when :class:`~strata.provisioner.wakeups.Wakeups` says the
queue changed (an attempt queued, room freed, a node registered), or after the
poll at the latest; once a round commits, the sessions of the nodes that got
attempts are woken to send them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from strata.api.common.v1.resources_pb2 import Resources as ResourcesMessage
from strata.api.provisioner.v1.provisioner_pb2 import NODE_STATE_READY, NodeClass, TaskPlaced
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.lease import alive_since
from strata.provisioner.domain.placement import Attempt, place
from strata.provisioner.domain.resources import Resources
from strata.provisioner.domain.sizing import PastAttempt, SizingPolicy, size_attempt
from strata.provisioner.store import (
    NodeStore,
    Queued,
    QueuePolicies,
    QueueStore,
    StoredNode,
    TaskKey,
    UsageHistory,
)
from strata.provisioner.wakeups import Wakeups

log = structlog.stdlib.get_logger(__name__)

MAX_NODES = 10_000
"""Most nodes one round considers; far above what one provisioner serves."""


class Fleet(Protocol):
    """The nodes the providers can supply (:mod:`strata.provisioner.fleet`), as placement
    and the API see them."""

    def largest_memory_bytes(self) -> int:
        """Memory of the largest node any node class offers; 0: none configured."""
        ...

    async def describe(self) -> list[NodeClass]:
        """The node classes with their nodes and their provider's state."""
        ...


class Placement:
    """Placement rounds over the nodes and queue of one provisioner schema."""

    def __init__(
        self,
        context: ServiceContext,
        lease: timedelta,
        fleet: Fleet | None = None,
        sizing: SizingPolicy | None = None,
    ) -> None:
        self._context = context
        self._lease = lease
        self._fleet = fleet
        self._sizing = sizing or SizingPolicy()
        self._nodes = NodeStore(context.pool, context.schema)
        self._queue = QueueStore(context.pool, context.schema)
        self._policies = QueuePolicies(context.pool, context.schema)
        self._history = UsageHistory(context.pool, context.schema)

    async def round(self) -> set[str]:
        """Place what fits now; return the nodes that got attempts (once committed)."""
        async with self._context.pool.acquire() as conn, conn.transaction():
            await self._queue.lock_round(conn)
            waiting = await self._queue.waiting(conn)
            if not waiting:
                return set()
            now = datetime.now(UTC)
            nodes = await self._nodes.list(
                [NODE_STATE_READY],
                after="",
                limit=MAX_NODES,
                seen_since=alive_since(now, self._lease),
                conn=conn,
            )
            policies = await self._policies.all(conn)
            use = await self._queue.use(conn)
            history = await self._history.of(conn, {_task(q) for q in waiting})
            largest = self._largest_memory_bytes(nodes)
            sized = [_sized(q, history.get(_task(q), ()), largest, self._sizing) for q in waiting]
            plan = place([n.node_at(now) for n in nodes], sized, policies, use)
            await self._queue.place(conn, plan.placed)
            refs = {_key(q.attempt): q.request.attempt for q in waiting}
            await self._context.outbox.publish(
                conn,
                *(
                    TaskPlaced(
                        attempt=refs[_key(p.attempt)],
                        node_id=p.node_id,
                        limits=_message(p.attempt.limits),
                        reserved=_message(p.attempt.need),
                    )
                    for p in plan.placed
                ),
            )
            await self._queue.wait(conn, plan.waiting)
        if plan.placed:
            log.info("attempts placed", placed=len(plan.placed), waiting=len(plan.waiting))
        return {placed.node_id for placed in plan.placed}

    def _largest_memory_bytes(self, nodes: Sequence[StoredNode]) -> int:
        """The most memory one node can give: the largest node class, or node connected."""
        connected = max((n.registration.capacity.memory_bytes for n in nodes), default=0)
        supplied = self._fleet.largest_memory_bytes() if self._fleet is not None else 0
        return max(connected, supplied)


def _sized(
    queued: Queued,
    history: Sequence[PastAttempt],
    largest_memory_bytes: int,
    policy: SizingPolicy,
) -> Attempt:
    """The attempt with its limits and reserve sized from its task's past attempts."""
    attempt = queued.attempt
    largest = max(largest_memory_bytes, attempt.limits.memory_bytes)
    sizing = size_attempt(attempt.limits, history, largest, policy, run_id=attempt.run_id)
    return replace(
        attempt,
        limits=sizing.limits,
        reserve=sizing.reserve,
        expected_seconds=sizing.expected_seconds,
    )


def _task(queued: Queued) -> TaskKey:
    return (queued.request.workflow_name, queued.attempt.task_id)


def _key(attempt: Attempt) -> tuple[str, str, int]:
    return (attempt.run_id, attempt.task_id, attempt.attempt)


def _message(amounts: Resources) -> ResourcesMessage:
    return ResourcesMessage(
        cpu_millis=amounts.cpu_millis, memory_bytes=amounts.memory_bytes, gpus=amounts.gpus
    )


def placement_loop(
    wakeups: Wakeups,
    poll: float,
    lease: timedelta,
    fleet: Fleet | None = None,
    sizing: SizingPolicy | None = None,
) -> Callable[[ServiceContext], Awaitable[None]]:
    """The placement loop, until cancelled: a round each time the queue changes, or
    every ``poll`` seconds at the latest; each placement wakes its node's session.
    Only nodes heard from within ``lease`` get attempts; ``fleet`` (when node classes
    are configured) says how large a node can be, which bounds memory raised after an
    out-of-memory attempt; ``sizing`` how attempts are sized from their tasks' history."""

    async def run(context: ServiceContext) -> None:
        placement = Placement(context, lease, fleet, sizing)
        while True:
            wakeups.placed_on(await placement.round())
            await wakeups.until_queue_changed(poll)

    return run
