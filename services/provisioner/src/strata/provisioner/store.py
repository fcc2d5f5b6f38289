"""The provisioner's SQL: nodes, the queue of waiting attempts, and placements, in
the service's own schema.

Requests are kept as their ``TaskRequested`` bytes, so an assignment is built
from what is durable and can be sent again after a restart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import ResourceUsage
from strata.api.provisioner.v1.provisioner_pb2 import (
    NODE_STATE_DRAINED,
    NODE_STATE_DRAINING,
    NODE_STATE_LOST,
    NodeState,
)
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.migrations import DbConnection, quote_schema
from strata.provisioner.domain.cancellation import Where
from strata.provisioner.domain.draining import Drain, registered
from strata.provisioner.domain.placement import Attempt, Node, Placed, QueueUse, Waiting
from strata.provisioner.domain.queues import DEFAULT_QUEUE, QueuePolicy, Quota
from strata.provisioner.domain.registration import Registration
from strata.provisioner.domain.resources import Resources
from strata.provisioner.domain.sizing import PastAttempt

HISTORY = 20
"""Past attempts of a task that sizing looks at, newest first."""

PlacementPosition = tuple[datetime, str, str, int]
"""Where a placement stands in ListPlacements' order: placed at, run, task, attempt."""

TaskKey = tuple[str, str]
"""(workflow name, task id): what "the same task" is across runs."""


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
    busy_until: datetime | None = None
    """When its placements with an expected run time are expected to end (the latest)."""

    def node_at(self, now: datetime) -> Node:
        """The node as placement sees it at ``now``."""
        runs_for = 0.0
        if self.busy_until is not None:
            runs_for = max(0.0, (self.busy_until - now).total_seconds())
        return Node(
            node_id=self.registration.node_id,
            capacity=self.registration.capacity,
            reserved=self.reserved,
            labels=self.registration.labels,
            warm_bundles=frozenset(self.registration.warm_bundles),
            runs_for=runs_for,
        )


@dataclass(frozen=True)
class DrainView:
    """What a drain decides on: the node's state, its placements, and its drain."""

    state: NodeState.ValueType
    placements: int
    drain: Drain | None


@dataclass(frozen=True)
class Queued:
    """One waiting attempt: the request, where it stands in the queue, and why it waits.

    ``reserve`` is what the last placement round sized it to reserve (None before any
    round looked at it); ``for_capacity`` whether it waits for room on a node rather
    than for its queue's quota or per-user cap.
    """

    request: TaskRequested
    attempt: Attempt
    waiting_for: str
    for_capacity: bool = False
    reserve: Resources | None = None


@dataclass(frozen=True)
class QueueState:
    """A queue as stored (or the defaults of one never applied) with what it uses now."""

    policy: QueuePolicy
    use: QueueUse
    running: int
    waiting: int


@dataclass(frozen=True)
class StoredPlacement:
    """One attempt placed on a node; ``cancel_reason`` is set once it was asked to stop."""

    request: TaskRequested
    node_id: str
    reserved: Resources
    running: bool
    placed_at: datetime
    cancel_reason: str | None = None
    limits: Resources | None = None
    """The hard limits the agent enforces; None: the request's."""
    user: str = ""
    expected_seconds: float | None = None
    """How long it is expected to run (its sizing's); None: too few run times known."""


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
        queue=request.queue or DEFAULT_QUEUE,
        bundle_sha256=request.bundle.sha256,
        requested_at=requested_at,
        sequence=sequence,
        user=request.user,
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
            f"count(p.node_id) AS placement_count, "
            f"max(p.placed_at + make_interval(secs => p.expected_seconds)) AS busy_until "
            f"FROM {self._s}.nodes n LEFT JOIN {self._s}.placements p ON p.node_id = n.node_id "
        )

    async def register(self, registration: Registration, now: datetime) -> StoredNode:
        """Store the node under a new session (a later session replaces an older one):
        READY, unless a kept drain holds it
        (:func:`~strata.provisioner.domain.draining.registered`); a drain that was not
        kept (its agent's leaving) ends here."""
        session_id = str(uuid.uuid4())
        async with self._pool.acquire() as conn, conn.transaction():
            before = await self.lock_drain(conn, registration.node_id)
            kept = before is not None and before.drain is not None and before.drain.kept
            state = registered(kept, before.placements if before is not None else 0)
            await conn.execute(
                f"INSERT INTO {self._s}.nodes (node_id, hostname, state, cpu_millis, "
                "memory_bytes, gpus, labels, agent_version, warm_bundles, session_id, "
                "joined_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
                "$11) ON CONFLICT (node_id) DO UPDATE SET hostname = $2, state = $3, "
                "cpu_millis = $4, memory_bytes = $5, gpus = $6, labels = $7, "
                "agent_version = $8, warm_bundles = $9, session_id = $10, joined_at = $11, "
                "last_seen_at = $11, lost_at = NULL, "
                "drain_reason = CASE WHEN $12 THEN nodes.drain_reason END, "
                "drain_shutdown = $12 AND nodes.drain_shutdown, drain_kept = $12",
                registration.node_id,
                registration.hostname,
                state,
                registration.capacity.cpu_millis,
                registration.capacity.memory_bytes,
                registration.capacity.gpus,
                json.dumps(dict(registration.labels)),
                registration.agent_version,
                list(registration.warm_bundles),
                session_id,
                now,
                kept,
            )
        node = await self.get(registration.node_id)
        assert node is not None, "the node was stored just above"
        return node

    async def lock_drain(self, conn: DbConnection, node_id: str) -> DrainView | None:
        """The node's state, placements and drain, its row locked; None when unknown."""
        row = await conn.fetchrow(
            f"SELECT n.state, n.drain_reason, n.drain_shutdown, n.drain_kept, "
            f"(SELECT count(*) FROM {self._s}.placements p WHERE p.node_id = n.node_id) "
            f"AS placements FROM {self._s}.nodes n WHERE n.node_id = $1 FOR UPDATE",
            node_id,
        )
        if row is None:
            return None
        return DrainView(row["state"], row["placements"], _drain(row))

    async def drained(
        self, conn: DbConnection, node_id: str, state: NodeState.ValueType, drain: Drain
    ) -> None:
        """Record the node's drain and its state after it: the first reason stays, a kept
        drain or one asking for shutdown is never made weaker by a later one."""
        await conn.execute(
            f"UPDATE {self._s}.nodes SET state = $2, drain_reason = coalesce(drain_reason, $3), "
            "drain_shutdown = drain_shutdown OR $4, drain_kept = drain_kept OR $5 "
            "WHERE node_id = $1",
            node_id,
            state,
            drain.reason,
            drain.shutdown_when_empty,
            drain.kept,
        )

    async def settle_drain(self, conn: DbConnection, node_id: str) -> str | None:
        """In the caller's transaction, once a placement on the node ended: a DRAINING node
        with no placement left is DRAINED; the reason of its drain when it just was."""
        reason: str | None = await conn.fetchval(
            f"UPDATE {self._s}.nodes n SET state = $2 WHERE n.node_id = $1 AND n.state = $3 "
            f"AND NOT EXISTS (SELECT 1 FROM {self._s}.placements p WHERE p.node_id = n.node_id) "
            "RETURNING coalesce(n.drain_reason, '')",
            node_id,
            NODE_STATE_DRAINED,
            NODE_STATE_DRAINING,
        )
        return reason

    async def drain_of(self, node_id: str) -> Drain | None:
        """The node's drain, None when it does not drain."""
        row = await self._pool.fetchrow(
            f"SELECT drain_reason, drain_shutdown, drain_kept FROM {self._s}.nodes "
            "WHERE node_id = $1",
            node_id,
        )
        return None if row is None else _drain(row)

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
        """Record that ``node_id`` was declared lost at ``now``; that ends its drain."""
        await conn.execute(
            f"UPDATE {self._s}.nodes SET state = $2, lost_at = $3, drain_reason = NULL, "
            "drain_shutdown = false, drain_kept = false WHERE node_id = $1",
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
            f"INSERT INTO {self._s}.pending (run_id, task_id, attempt, queue, priority, request, "
            "workflow_name, user_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT DO NOTHING",
            a.run_id,
            a.task_id,
            a.attempt,
            request.queue or DEFAULT_QUEUE,
            request.priority,
            request.SerializeToString(deterministic=True),
            request.workflow_name,
            request.user,
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
            f"SELECT request, sequence, requested_at, waiting_for, for_capacity, "
            f"reserve_cpu_millis, reserve_memory_bytes, reserve_gpus FROM {self._s}.pending "
            "WHERE $1::text IS NULL OR queue = $1 ORDER BY priority DESC, sequence",
            queue,
        )
        queued = []
        for row in rows:
            request = TaskRequested.FromString(row["request"])
            attempt = attempt_of(request, row["sequence"], row["requested_at"])
            reserve = (
                None
                if row["reserve_cpu_millis"] is None
                else Resources(
                    row["reserve_cpu_millis"], row["reserve_memory_bytes"], row["reserve_gpus"]
                )
            )
            queued.append(
                Queued(request, attempt, row["waiting_for"], row["for_capacity"], reserve)
            )
        return queued

    async def place(self, conn: DbConnection, placed: Sequence[Placed]) -> None:
        """Move the placed attempts from the queue to their nodes, in one statement: each
        reserves its need and keeps its (possibly raised) limits."""
        if not placed:
            return
        columns: list[list[object]] = [[] for _ in range(11)]
        for p in placed:
            a, need = p.attempt, p.attempt.need
            for column, value in zip(
                columns,
                (
                    a.run_id,
                    a.task_id,
                    a.attempt,
                    p.node_id,
                    need.cpu_millis,
                    need.memory_bytes,
                    need.gpus,
                    a.limits.cpu_millis,
                    a.limits.memory_bytes,
                    a.limits.gpus,
                    a.expected_seconds,
                ),
                strict=True,
            ):
                column.append(value)
        await conn.execute(
            f"WITH moved AS (DELETE FROM {self._s}.pending p USING unnest($1::text[], "
            "$2::text[], $3::integer[], $4::text[], $5::bigint[], $6::bigint[], $7::integer[], "
            "$8::bigint[], $9::bigint[], $10::integer[], $11::double precision[]) AS u(u_run, "
            "u_task, u_attempt, u_node, u_cpu, u_mem, u_gpus, u_lcpu, u_lmem, u_lgpus, u_expected) "
            "WHERE p.run_id = u.u_run AND p.task_id = u.u_task AND p.attempt = u.u_attempt "
            "RETURNING p.run_id, p.task_id, p.attempt, p.queue, p.priority, p.request, "
            "p.workflow_name, p.user_name, u.*) "
            f"INSERT INTO {self._s}.placements (run_id, task_id, attempt, node_id, queue, "
            "priority, request, cpu_millis, memory_bytes, gpus, workflow_name, user_name, "
            "limit_cpu_millis, limit_memory_bytes, limit_gpus, expected_seconds) "
            "SELECT run_id, task_id, attempt, u_node, queue, priority, request, u_cpu, u_mem, "
            "u_gpus, workflow_name, user_name, u_lcpu, u_lmem, u_lgpus, u_expected FROM moved",
            *columns,
        )

    async def wait(self, conn: DbConnection, waiting: Sequence[Waiting]) -> None:
        """Record why each of ``waiting`` is not placed yet, whether it waits for node room,
        and what it will reserve, in one statement; rows already saying so are not
        rewritten."""
        if not waiting:
            return
        columns: list[list[object]] = [[] for _ in range(8)]
        for w in waiting:
            a, need = w.attempt, w.attempt.need
            for column, value in zip(
                columns,
                (
                    a.run_id,
                    a.task_id,
                    a.attempt,
                    w.reason,
                    w.for_capacity,
                    need.cpu_millis,
                    need.memory_bytes,
                    need.gpus,
                ),
                strict=True,
            ):
                column.append(value)
        await conn.execute(
            f"UPDATE {self._s}.pending p SET waiting_for = u.reason, for_capacity = u.room, "
            "reserve_cpu_millis = u.cpu, reserve_memory_bytes = u.mem, reserve_gpus = u.gpus "
            "FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::boolean[], "
            "$6::bigint[], $7::bigint[], $8::integer[]) "
            "AS u(run_id, task_id, attempt, reason, room, cpu, mem, gpus) "
            "WHERE p.run_id = u.run_id AND p.task_id = u.task_id AND p.attempt = u.attempt "
            "AND (p.waiting_for, p.for_capacity, p.reserve_cpu_millis, p.reserve_memory_bytes, "
            "p.reserve_gpus) IS DISTINCT FROM (u.reason, u.room, u.cpu, u.mem, u.gpus)",
            *columns,
        )

    async def use(self, conn: DbConnection | None = None) -> dict[str, QueueUse]:
        """What each queue's placements reserve now, and how many each user has placed."""
        rows = await (conn or self._pool).fetch(
            f"SELECT queue, user_name, count(*) AS n, sum(cpu_millis)::bigint AS cpu, "
            f"sum(memory_bytes)::bigint AS mem, sum(gpus)::integer AS gpus "
            f"FROM {self._s}.placements GROUP BY queue, user_name"
        )
        reserved: dict[str, Resources] = {}
        by_user: dict[str, dict[str, int]] = {}
        for r in rows:
            queue = r["queue"]
            reserved[queue] = reserved.get(queue, Resources()) + Resources(
                r["cpu"], r["mem"], r["gpus"]
            )
            by_user.setdefault(queue, {})[r["user_name"]] = r["n"]
        return {
            queue: QueueUse(reserved=reserved[queue], running_by_user=by_user[queue])
            for queue in reserved
        }

    async def waiting_counts(self) -> dict[str, int]:
        """How many attempts wait in each queue that has any."""
        rows = await self._pool.fetch(
            f"SELECT queue, count(*) AS n FROM {self._s}.pending GROUP BY queue"
        )
        return {r["queue"]: r["n"] for r in rows}

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
        return [_placement(r) for r in rows]

    async def placements(
        self, *, node_id: str, run_id: str, after: PlacementPosition | None, limit: int
    ) -> list[StoredPlacement]:
        """Placements (on ``node_id``, of ``run_id``: "" for any) after ``after`` in their
        order, oldest first (then by attempt), at most ``limit``."""
        placed_at, run, task, attempt = after or (None, "", "", 0)
        rows = await self._pool.fetch(
            f"SELECT * FROM {self._s}.placements WHERE ($1 = '' OR node_id = $1) "
            "AND ($2 = '' OR run_id = $2) AND ($3::timestamptz IS NULL OR "
            "(placed_at, run_id, task_id, attempt) > ($3, $4, $5, $6)) "
            "ORDER BY placed_at, run_id, task_id, attempt LIMIT $7",
            node_id,
            run_id,
            placed_at,
            run,
            task,
            attempt,
            limit,
        )
        return [_placement(r) for r in rows]


class QueuePolicies:
    """The queues people applied (quota, weight, per-user cap) in ``schema``; a queue
    never applied has :class:`QueuePolicy` defaults."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._s = quote_schema(schema)

    async def apply(self, policy: QueuePolicy) -> None:
        """Create the queue or replace its quota, weight and cap."""
        q = policy.quota
        await self._pool.execute(
            f"INSERT INTO {self._s}.queues (name, quota_cpu_millis, quota_memory_bytes, "
            "quota_gpus, weight, max_running_per_user, applied_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (name) DO UPDATE SET "
            "quota_cpu_millis = $2, quota_memory_bytes = $3, quota_gpus = $4, weight = $5, "
            "max_running_per_user = $6, applied_at = now()",
            policy.name,
            q.cpu_millis,
            q.memory_bytes,
            q.gpus,
            policy.weight,
            policy.max_running_per_user,
        )

    async def all(self, conn: DbConnection | None = None) -> dict[str, QueuePolicy]:
        """Every applied queue, by name."""
        rows = await (conn or self._pool).fetch(f"SELECT * FROM {self._s}.queues ORDER BY name")
        return {r["name"]: _policy(r) for r in rows}

    async def get(self, name: str) -> QueuePolicy:
        """The queue ``name`` as applied, else the defaults."""
        row = await self._pool.fetchrow(f"SELECT * FROM {self._s}.queues WHERE name = $1", name)
        return QueuePolicy(name) if row is None else _policy(row)


class UsageHistory:
    """What past attempts of each task used, newest first: what sizing learns from."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._s = quote_schema(schema)

    async def record(
        self,
        conn: DbConnection,
        attempt: TaskAttemptRef,
        peak: ResourceUsage,
        out_of_memory: bool,
        now: datetime,
        mean_memory_bytes: int = 0,
        evicted: bool = False,
    ) -> None:
        """Record the end of a placed attempt (call before its placement is dropped): its
        peak usage under the memory limit it was given, the memory it held on average
        (0: not measured), and whether its node's agent evicted it."""
        await conn.execute(
            f"INSERT INTO {self._s}.task_usage (workflow_name, task_id, run_id, attempt, "
            "peak_memory_bytes, peak_cpu_millis, limit_memory_bytes, out_of_memory, ended_at, "
            "mean_memory_bytes, evicted, run_seconds) "
            "SELECT workflow_name, task_id, run_id, attempt, $4, $5, limit_memory_bytes, $6, $7, "
            "$8, $9, greatest(extract(epoch FROM $7 - placed_at), 0) "
            f"FROM {self._s}.placements WHERE run_id = $1 AND task_id = $2 "
            "AND attempt = $3 ON CONFLICT DO NOTHING",
            attempt.run_id,
            attempt.task_id,
            attempt.attempt,
            peak.memory_bytes,
            peak.cpu_millis,
            out_of_memory,
            now,
            mean_memory_bytes,
            evicted,
        )

    async def of(
        self, conn: DbConnection, tasks: Collection[TaskKey]
    ) -> Mapping[TaskKey, list[PastAttempt]]:
        """The last :data:`HISTORY` attempts of each of ``tasks``, newest first, in one
        query; a task never run has none."""
        if not tasks:
            return {}
        workflows, task_ids = zip(*tasks, strict=True)
        rows = await conn.fetch(
            "SELECT k.workflow_name, k.task_id, h.peak_memory_bytes, h.peak_cpu_millis, "
            "h.limit_memory_bytes, h.out_of_memory, h.mean_memory_bytes, h.evicted, h.run_id, "
            "h.run_seconds "
            "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(workflow_name, task_id, i) "
            "CROSS JOIN LATERAL (SELECT * FROM "
            f"{self._s}.task_usage u WHERE u.workflow_name = k.workflow_name "
            "AND u.task_id = k.task_id ORDER BY u.ended_at DESC LIMIT $3) AS h "
            "ORDER BY k.i, h.ended_at DESC",
            list(workflows),
            list(task_ids),
            HISTORY,
        )
        history: dict[TaskKey, list[PastAttempt]] = {}
        for r in rows:
            history.setdefault((r["workflow_name"], r["task_id"]), []).append(
                PastAttempt(
                    peak_memory_bytes=r["peak_memory_bytes"],
                    peak_cpu_millis=r["peak_cpu_millis"],
                    limit_memory_bytes=r["limit_memory_bytes"],
                    out_of_memory=r["out_of_memory"],
                    mean_memory_bytes=r["mean_memory_bytes"],
                    evicted=r["evicted"],
                    run_id=r["run_id"],
                    run_seconds=r["run_seconds"],
                )
            )
        return history


def _policy(row: asyncpg.Record) -> QueuePolicy:
    return QueuePolicy(
        name=row["name"],
        quota=Quota(
            cpu_millis=row["quota_cpu_millis"],
            memory_bytes=row["quota_memory_bytes"],
            gpus=row["quota_gpus"],
        ),
        weight=row["weight"],
        max_running_per_user=row["max_running_per_user"],
    )


def _placement(row: asyncpg.Record) -> StoredPlacement:
    return StoredPlacement(
        request=TaskRequested.FromString(row["request"]),
        node_id=row["node_id"],
        reserved=Resources(row["cpu_millis"], row["memory_bytes"], row["gpus"]),
        running=row["running"],
        placed_at=row["placed_at"],
        cancel_reason=row["cancel_reason"],
        limits=Resources(row["limit_cpu_millis"], row["limit_memory_bytes"], row["limit_gpus"]),
        user=row["user_name"],
        expected_seconds=row["expected_seconds"],
    )


def _drain(row: asyncpg.Record) -> Drain | None:
    if row["drain_reason"] is None:
        return None
    return Drain(row["drain_reason"], row["drain_shutdown"], row["drain_kept"])


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
        busy_until=row["busy_until"],
    )
