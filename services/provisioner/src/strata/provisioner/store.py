"""The provisioner's SQL: nodes, the queue of waiting attempts, and placements, in
the service's own schema.

Requests are kept as their ``TaskRequested`` bytes, so an assignment is built
from what is durable and can be sent again after a restart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1.provisioner_pb2 import NODE_STATE_LOST, NODE_STATE_READY, NodeState
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.migrations import DbConnection, quote_schema
from strata.provisioner.domain.cancellation import Where
from strata.provisioner.domain.placement import Attempt, Node, Placed
from strata.provisioner.domain.registration import Registration
from strata.provisioner.domain.resources import Resources


@dataclass(frozen=True)
class StoredNode:
    """A node as stored, with what its placements reserve now."""

    registration: Registration
    state: NodeState.ValueType
    session_id: str
    reserved: Resources
    placement_count: int
    usage: bytes | None
    joined_at: datetime
    last_seen_at: datetime

    @property
    def node(self) -> Node:
        """The node as placement sees it."""
        return Node(
            node_id=self.registration.node_id,
            capacity=self.registration.capacity,
            reserved=self.reserved,
            labels=self.registration.labels,
            warm_bundles=frozenset(self.registration.warm_bundles),
        )


@dataclass(frozen=True)
class Queued:
    """One waiting attempt: the request, where it stands in the queue, and why it waits."""

    request: TaskRequested
    attempt: Attempt
    waiting_for: str


@dataclass(frozen=True)
class StoredPlacement:
    """One attempt placed on a node; ``cancel_reason`` is set once it was asked to stop."""

    request: TaskRequested
    node_id: str
    reserved: Resources
    running: bool
    placed_at: datetime
    cancel_reason: str | None = None


def attempt_of(
    request: TaskRequested, sequence: int = 0, requested_at: datetime | None = None
) -> Attempt:
    """The attempt placement sees in a ``TaskRequested``."""
    r = request.resources
    return Attempt(
        run_id=request.attempt.run_id,
        task_id=request.attempt.task_id,
        attempt=request.attempt.attempt,
        limits=Resources(r.cpu_millis, r.memory_bytes, r.gpus),
        priority=request.priority,
        queue=request.queue or "default",
        bundle_sha256=request.bundle.sha256,
        requested_at=requested_at,
        sequence=sequence,
    )


class NodeStore:
    """Nodes in ``schema``."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._s = quote_schema(schema)
        self._select = (
            f"SELECT n.*, coalesce(sum(p.cpu_millis), 0)::bigint AS r_cpu, "
            f"coalesce(sum(p.memory_bytes), 0)::bigint AS r_mem, "
            f"coalesce(sum(p.gpus), 0)::integer AS r_gpus, "
            f"count(p.node_id) AS placement_count "
            f"FROM {self._s}.nodes n LEFT JOIN {self._s}.placements p ON p.node_id = n.node_id "
        )

    async def register(self, registration: Registration, now: datetime) -> StoredNode:
        """Store the node as READY under a new session; a later session replaces an older one."""
        session_id = str(uuid.uuid4())
        await self._pool.execute(
            f"INSERT INTO {self._s}.nodes (node_id, hostname, state, cpu_millis, memory_bytes, "
            "gpus, labels, agent_version, warm_bundles, session_id, joined_at, last_seen_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) "
            "ON CONFLICT (node_id) DO UPDATE SET hostname = $2, state = $3, cpu_millis = $4, "
            "memory_bytes = $5, gpus = $6, labels = $7, agent_version = $8, warm_bundles = $9, "
            "session_id = $10, joined_at = $11, last_seen_at = $11, lost_at = NULL",
            registration.node_id,
            registration.hostname,
            NODE_STATE_READY,
            registration.capacity.cpu_millis,
            registration.capacity.memory_bytes,
            registration.capacity.gpus,
            json.dumps(dict(registration.labels)),
            registration.agent_version,
            list(registration.warm_bundles),
            session_id,
            now,
        )
        node = await self.get(registration.node_id)
        assert node is not None, "the node was stored just above"
        return node

    async def heard(
        self,
        node_id: str,
        session_id: str,
        now: datetime,
        usage: bytes | None = None,
        warm_bundles: Sequence[str] | None = None,
    ) -> bool:
        """Renew the node's lease from a message of session ``session_id``.

        False when a newer session replaced it, or the node was declared lost since:
        the message is from the past, and the session is over.
        """
        status = await self._pool.execute(
            f"UPDATE {self._s}.nodes SET last_seen_at = $3, usage = coalesce($4, usage), "
            "warm_bundles = coalesce($5, warm_bundles) "
            "WHERE node_id = $1 AND session_id = $2 AND lost_at IS NULL",
            node_id,
            session_id,
            now,
            usage,
            None if warm_bundles is None else list(warm_bundles),
        )
        return bool(status != "UPDATE 0")

    async def disconnected(self, node_id: str, session_id: str) -> None:
        """Mark the node LOST if ``session_id`` is still its session (its stream closed)."""
        await self._pool.execute(
            f"UPDATE {self._s}.nodes SET state = $3 WHERE node_id = $1 AND session_id = $2",
            node_id,
            session_id,
            NODE_STATE_LOST,
        )

    async def lapsed(self, conn: DbConnection, before: datetime) -> list[tuple[str, datetime]]:
        """Nodes not declared lost and last heard from before ``before``, as (node id, last
        heard), their rows locked; a node another provisioner is declaring is skipped."""
        rows = await conn.fetch(
            f"SELECT node_id, last_seen_at FROM {self._s}.nodes "
            "WHERE lost_at IS NULL AND last_seen_at < $1 ORDER BY node_id "
            "FOR UPDATE SKIP LOCKED",
            before,
        )
        return [(r["node_id"], r["last_seen_at"]) for r in rows]

    async def lost(self, conn: DbConnection, node_id: str, now: datetime) -> None:
        """Record that ``node_id`` was declared lost at ``now``."""
        await conn.execute(
            f"UPDATE {self._s}.nodes SET state = $2, lost_at = $3 WHERE node_id = $1",
            node_id,
            NODE_STATE_LOST,
            now,
        )

    async def get(self, node_id: str) -> StoredNode | None:
        row = await self._pool.fetchrow(
            f"{self._select} WHERE n.node_id = $1 GROUP BY n.node_id", node_id
        )
        return None if row is None else _node(row)

    async def list(
        self,
        states: Sequence[int],
        *,
        after: str,
        limit: int,
        seen_since: datetime | None = None,
        conn: DbConnection | None = None,
    ) -> list[StoredNode]:
        """Nodes in ``states`` (heard from since ``seen_since``, when given) with ids after
        ``after``, by id, at most ``limit``."""
        rows = await (conn or self._pool).fetch(
            f"{self._select} WHERE n.state = ANY($1::smallint[]) AND n.node_id > $2 "
            "AND ($4::timestamptz IS NULL OR n.last_seen_at >= $4) "
            "GROUP BY n.node_id ORDER BY n.node_id LIMIT $3",
            list(states),
            after,
            limit,
            seen_since,
        )
        return [_node(r) for r in rows]


class QueueStore:
    """The waiting attempts and the placements of ``schema``."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._s = quote_schema(schema)

    async def enqueue(self, conn: DbConnection, request: TaskRequested) -> bool:
        """Queue ``request`` unless the attempt is queued or placed already."""
        a = request.attempt
        placed = await conn.fetchval(
            f"SELECT 1 FROM {self._s}.placements WHERE run_id = $1 AND task_id = $2 "
            "AND attempt = $3",
            a.run_id,
            a.task_id,
            a.attempt,
        )
        if placed:
            return False
        status = await conn.execute(
            f"INSERT INTO {self._s}.pending (run_id, task_id, attempt, queue, priority, request) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            a.run_id,
            a.task_id,
            a.attempt,
            request.queue or "default",
            request.priority,
            request.SerializeToString(deterministic=True),
        )
        return bool(status != "INSERT 0 0")

    async def lock_round(self, conn: DbConnection) -> None:
        """Serialise placement rounds (of this and any other provisioner process)."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{self._s}.placement")

    async def waiting(
        self, conn: DbConnection | None = None, queue: str | None = None
    ) -> list[Queued]:
        """Waiting attempts (of ``queue``, or all) in queue order."""
        rows = await (conn or self._pool).fetch(
            f"SELECT request, sequence, requested_at, waiting_for FROM {self._s}.pending "
            "WHERE $1::text IS NULL OR queue = $1 ORDER BY priority DESC, sequence",
            queue,
        )
        queued = []
        for row in rows:
            request = TaskRequested.FromString(row["request"])
            attempt = attempt_of(request, row["sequence"], row["requested_at"])
            queued.append(Queued(request, attempt, row["waiting_for"]))
        return queued

    async def place(self, conn: DbConnection, placed: Placed, request: TaskRequested) -> None:
        """Move one attempt from the queue to its node."""
        a = placed.attempt
        await conn.execute(
            f"DELETE FROM {self._s}.pending WHERE run_id = $1 AND task_id = $2 AND attempt = $3",
            a.run_id,
            a.task_id,
            a.attempt,
        )
        await conn.execute(
            f"INSERT INTO {self._s}.placements (run_id, task_id, attempt, node_id, queue, "
            "priority, request, cpu_millis, memory_bytes, gpus) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            a.run_id,
            a.task_id,
            a.attempt,
            placed.node_id,
            a.queue,
            a.priority,
            request.SerializeToString(deterministic=True),
            a.limits.cpu_millis,
            a.limits.memory_bytes,
            a.limits.gpus,
        )

    async def wait(self, conn: DbConnection, attempt: Attempt, reason: str) -> None:
        """Record why ``attempt`` is not placed yet."""
        await conn.execute(
            f"UPDATE {self._s}.pending SET waiting_for = $4 "
            "WHERE run_id = $1 AND task_id = $2 AND attempt = $3 AND waiting_for <> $4",
            attempt.run_id,
            attempt.task_id,
            attempt.attempt,
            reason,
        )

    async def lock_placement(
        self, conn: DbConnection, run_id: str, task_id: str, attempt: int
    ) -> str | None:
        """The node the attempt is placed on (its row locked), None when it is not placed."""
        node_id: str | None = await conn.fetchval(
            f"SELECT node_id FROM {self._s}.placements WHERE run_id = $1 AND task_id = $2 "
            "AND attempt = $3 FOR UPDATE",
            run_id,
            task_id,
            attempt,
        )
        return node_id

    async def started(self, conn: DbConnection, run_id: str, task_id: str, attempt: int) -> None:
        await conn.execute(
            f"UPDATE {self._s}.placements SET running = true "
            "WHERE run_id = $1 AND task_id = $2 AND attempt = $3",
            run_id,
            task_id,
            attempt,
        )

    async def ended(self, conn: DbConnection, run_id: str, task_id: str, attempt: int) -> None:
        """Drop the placement: what it reserved is free again."""
        await conn.execute(
            f"DELETE FROM {self._s}.placements WHERE run_id = $1 AND task_id = $2 AND attempt = $3",
            run_id,
            task_id,
            attempt,
        )

    async def locate(self, conn: DbConnection, run_id: str, task_id: str, attempt: int) -> Where:
        """Where the attempt stands, its row locked until the transaction ends."""
        for table, where in (("pending", Where.QUEUED), ("placements", Where.PLACED)):
            found = await conn.fetchval(
                f"SELECT 1 FROM {self._s}.{table} WHERE run_id = $1 AND task_id = $2 "
                "AND attempt = $3 FOR UPDATE",
                run_id,
                task_id,
                attempt,
            )
            if found:
                return where
        return Where.GONE

    async def dequeue(self, conn: DbConnection, run_id: str, task_id: str, attempt: int) -> None:
        """Take a waiting attempt out of the queue."""
        await conn.execute(
            f"DELETE FROM {self._s}.pending WHERE run_id = $1 AND task_id = $2 AND attempt = $3",
            run_id,
            task_id,
            attempt,
        )

    async def ask_to_stop(
        self, conn: DbConnection, run_id: str, task_id: str, attempt: int, reason: str
    ) -> str | None:
        """Mark a placed attempt to be stopped by its agent (the first reason stays); the
        node it is placed on."""
        node_id: str | None = await conn.fetchval(
            f"UPDATE {self._s}.placements SET cancel_reason = coalesce(cancel_reason, $4) "
            "WHERE run_id = $1 AND task_id = $2 AND attempt = $3 RETURNING node_id",
            run_id,
            task_id,
            attempt,
            reason,
        )
        return node_id

    async def free_node(self, conn: DbConnection, node_id: str) -> list[TaskAttemptRef]:
        """Drop every placement on ``node_id`` (its node is lost); the attempts, oldest first."""
        rows = await conn.fetch(
            f"DELETE FROM {self._s}.placements WHERE node_id = $1 "
            "RETURNING run_id, task_id, attempt, placed_at",
            node_id,
        )
        ordered = sorted(rows, key=lambda r: (r["placed_at"], r["run_id"], r["task_id"]))
        return [
            TaskAttemptRef(run_id=r["run_id"], task_id=r["task_id"], attempt=r["attempt"])
            for r in ordered
        ]

    async def on_node(self, node_id: str) -> list[StoredPlacement]:
        """The placements on ``node_id``, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT * FROM {self._s}.placements WHERE node_id = $1 ORDER BY placed_at, run_id, "
            "task_id",
            node_id,
        )
        return [
            StoredPlacement(
                request=TaskRequested.FromString(r["request"]),
                node_id=r["node_id"],
                reserved=Resources(r["cpu_millis"], r["memory_bytes"], r["gpus"]),
                running=r["running"],
                placed_at=r["placed_at"],
                cancel_reason=r["cancel_reason"],
            )
            for r in rows
        ]


def _node(row: asyncpg.Record) -> StoredNode:
    return StoredNode(
        registration=Registration(
            node_id=row["node_id"],
            hostname=row["hostname"],
            capacity=Resources(row["cpu_millis"], row["memory_bytes"], row["gpus"]),
            labels=json.loads(row["labels"]),
            agent_version=row["agent_version"],
            warm_bundles=tuple(row["warm_bundles"]),
        ),
        state=row["state"],
        session_id=str(row["session_id"]),
        reserved=Resources(row["r_cpu"], row["r_mem"], row["r_gpus"]),
        placement_count=row["placement_count"],
        usage=row["usage"],
        joined_at=row["joined_at"],
        last_seen_at=row["last_seen_at"],
    )
