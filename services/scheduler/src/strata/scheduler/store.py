"""The scheduler's SQL: workflows and their versions, runs and their task instances,
in the service's own schema.

Specs are stored as their proto bytes (the deterministic serialisation whose hash
identifies them); everything else is a column, so listing and comparing never
decode a spec.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from strata.api.scheduler.v1.scheduler_pb2 import (
    RUN_STATE_QUEUED,
    RunCause,
    RunState,
    WorkflowSpec,
)
from strata.core.migrations import DbConnection
from strata.core.versions import next_version, spec_sha256
from strata.scheduler.domain.resources import Resources, Usage
from strata.scheduler.domain.runs import RUN_ACTIVE, TaskStatus
from strata.scheduler.domain.triggers import ArrivedPartition


@dataclass(frozen=True)
class StoredWorkflow:
    """One version of a workflow as stored, with whether the workflow is paused now."""

    spec: WorkflowSpec
    version: int
    spec_sha256: str
    applied_at: datetime
    applied_by: str
    paused: bool


@dataclass(frozen=True)
class Applied:
    workflow: StoredWorkflow
    changed: bool


_SELECT = """
    SELECT v.spec, v.version, v.spec_sha256, v.applied_at, v.applied_by, w.paused
    FROM {schema}.workflows w
    JOIN {schema}.workflow_versions v ON v.name = w.name
"""


class WorkflowStore:
    """Workflows in ``schema``; each method is one transaction."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self._select = _SELECT.format(schema=schema)

    async def apply(self, spec: WorkflowSpec, *, paused: bool, applied_by: str) -> Applied:
        """Store ``spec`` as the next version unless it equals the current one.

        The workflow's row is locked for the transaction, so concurrent applies of
        one name get consecutive versions and an identical spec never gets two.
        """
        sha = spec_sha256(spec)
        s = self._schema
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {s}.workflows (name, current_version) VALUES ($1, 0) "
                "ON CONFLICT (name) DO NOTHING",
                spec.name,
            )
            current = await conn.fetchrow(
                f"SELECT w.current_version, v.spec_sha256 FROM {s}.workflows w "
                f"LEFT JOIN {s}.workflow_versions v "
                "ON v.name = w.name AND v.version = w.current_version "
                "WHERE w.name = $1 FOR UPDATE OF w",
                spec.name,
            )
            assert current is not None, "the row was inserted or locked just above"
            existing = current["current_version"] or None
            outcome = next_version(existing, current["spec_sha256"], sha)
            if outcome.changed:
                await conn.execute(
                    f"INSERT INTO {s}.workflow_versions (name, version, spec, spec_sha256, "
                    "applied_by) VALUES ($1, $2, $3, $4, $5)",
                    spec.name,
                    outcome.version,
                    spec.SerializeToString(deterministic=True),
                    sha,
                    applied_by,
                )
            await conn.execute(
                f"UPDATE {s}.workflows SET current_version = $2, paused = $3, updated_at = now() "
                "WHERE name = $1",
                spec.name,
                outcome.version,
                paused,
            )
            row = await conn.fetchrow(
                f"{self._select} WHERE w.name = $1 AND v.version = $2", spec.name, outcome.version
            )
        assert row is not None, "the version was stored or found just above"
        return Applied(_workflow(row), outcome.changed)

    async def get(self, name: str, version: int = 0) -> StoredWorkflow | None:
        """Version ``version`` of ``name`` (0: the current one), or None."""
        if version:
            row = await self._pool.fetchrow(
                f"{self._select} WHERE w.name = $1 AND v.version = $2", name, version
            )
        else:
            row = await self._pool.fetchrow(
                f"{self._select} WHERE w.name = $1 AND v.version = w.current_version", name
            )
        return None if row is None else _workflow(row)

    async def current(self) -> list[StoredWorkflow]:
        """The current version of every workflow: what triggers are matched against.

        Triggers are read from the specs themselves, so nothing derived from a spec
        can drift from it; a scheduler holds hundreds of workflows, not millions.
        By name, so transactions that lock several workflows lock them in one order.
        """
        rows = await self._pool.fetch(
            f"{self._select} WHERE v.version = w.current_version ORDER BY w.name"
        )
        return [_workflow(row) for row in rows]

    async def list(self, *, after: str, limit: int) -> list[StoredWorkflow]:
        """Current versions of the workflows named after ``after``, by name, at most ``limit``."""
        rows = await self._pool.fetch(
            f"{self._select} WHERE v.version = w.current_version AND w.name > $1 "
            "ORDER BY w.name LIMIT $2",
            after,
            limit,
        )
        return [_workflow(row) for row in rows]


def _workflow(row: asyncpg.Record) -> StoredWorkflow:
    return StoredWorkflow(
        spec=WorkflowSpec.FromString(row["spec"]),
        version=row["version"],
        spec_sha256=row["spec_sha256"],
        applied_at=row["applied_at"],
        applied_by=row["applied_by"],
        paused=row["paused"],
    )


@dataclass(frozen=True)
class StoredRun:
    """A run as stored, with every task in DAG order (empty when listed)."""

    run_id: str
    workflow_name: str
    workflow_version: int
    state: RunState.ValueType
    cause: RunCause
    params: dict[str, Any]
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tasks: tuple[TaskStatus, ...] = ()
    lane: str = ""
    """The runs this one counts against for its limit: '' (max_active_runs) or a backfill's."""
    lane_limit: int = 0
    """Most active runs of the lane (0: no limit)."""


_RUN_COLUMNS = (
    "run_id, workflow_name, workflow_version, state, cause, params, message, "
    "created_at, started_at, finished_at, lane, lane_limit"
)
_TASK_COLUMNS = (
    "task_id, state, attempt, node_id, outputs, message, due_at, started_at, finished_at, "
    "requested, limits, reserved, peak_usage, evictions, losses"
)


class RunStore:
    """Runs and task instances in ``schema``. Methods taking ``conn`` run in the
    caller's transaction, beside the outbox events announcing the change."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def insert(
        self,
        conn: DbConnection,
        run: StoredRun,
        request_id: str | None,
        trigger_key: str | None = None,
    ) -> bool:
        """Store a new run and its tasks; False when ``request_id`` or ``trigger_key``
        was used already."""
        s = self._schema
        inserted = await conn.fetchval(
            f"INSERT INTO {s}.runs (run_id, workflow_name, workflow_version, state, cause, "
            "params, message, created_at, started_at, finished_at, request_id, trigger_key, "
            "lane, lane_limit) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
            "ON CONFLICT DO NOTHING RETURNING true",
            uuid.UUID(run.run_id),
            run.workflow_name,
            run.workflow_version,
            run.state,
            run.cause.SerializeToString(),
            json.dumps(run.params),
            run.message,
            run.created_at,
            run.started_at,
            run.finished_at,
            request_id,
            trigger_key,
            run.lane,
            run.lane_limit,
        )
        if not inserted:
            return False
        await conn.executemany(
            f"INSERT INTO {s}.task_instances (run_id, position, {_TASK_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            [(uuid.UUID(run.run_id), i, *_task_values(t)) for i, t in enumerate(run.tasks)],
        )
        return True

    async def by_request(self, conn: DbConnection, request_id: str) -> StoredRun | None:
        """The run a TriggerRun with ``request_id`` started, with its tasks."""
        run_id = await conn.fetchval(
            f"SELECT run_id FROM {self._schema}.runs WHERE request_id = $1", request_id
        )
        return None if run_id is None else await self.get(str(run_id), conn)

    async def by_trigger(self, conn: DbConnection, trigger_key: str) -> StoredRun | None:
        """The run a trigger with ``trigger_key`` started, with its tasks."""
        run_id = await conn.fetchval(
            f"SELECT run_id FROM {self._schema}.runs WHERE trigger_key = $1", trigger_key
        )
        return None if run_id is None else await self.get(str(run_id), conn)

    async def lock_lanes(self, conn: DbConnection, workflow_name: str) -> None:
        """Lock the workflow's row until the transaction ends: whoever counts the
        active runs of one of its lanes and then starts one holds it, so two never
        both take the last place."""
        await conn.execute(
            f"SELECT 1 FROM {self._schema}.workflows WHERE name = $1 FOR UPDATE", workflow_name
        )

    async def active_in_lane(self, conn: DbConnection, workflow_name: str, lane: str) -> int:
        """How many runs of the lane are RUNNING or CANCELLING."""
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM {self._schema}.runs "
            "WHERE workflow_name = $1 AND lane = $2 AND state = ANY($3::smallint[])",
            workflow_name,
            lane,
            list(RUN_ACTIVE),
        )
        return count

    async def oldest_queued(
        self, conn: DbConnection, workflow_name: str, lane: str
    ) -> StoredRun | None:
        """The lane's QUEUED run created first, locked, with its tasks."""
        row = await conn.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM {self._schema}.runs "
            "WHERE workflow_name = $1 AND lane = $2 AND state = $3 "
            "ORDER BY created LIMIT 1 FOR UPDATE",
            workflow_name,
            lane,
            RUN_STATE_QUEUED,
        )
        return None if row is None else await self._with_tasks(conn, row)

    async def record_changes(
        self, conn: DbConnection, run_id: str, changes: Sequence[bytes]
    ) -> None:
        """Append what WatchRun streams about the run, in the caller's transaction."""
        await conn.executemany(
            f"INSERT INTO {self._schema}.run_changes (run_id, change) VALUES ($1, $2)",
            [(uuid.UUID(run_id), change) for change in changes],
        )

    async def prune_changes(self, finished_before: datetime) -> int:
        """Delete the changes of runs finished before ``finished_before``; how many."""
        status = await self._pool.execute(
            f"DELETE FROM {self._schema}.run_changes c USING {self._schema}.runs r "
            "WHERE c.run_id = r.run_id AND r.finished_at < $1",
            finished_before,
        )
        return int(status.split()[-1])

    async def snapshot(self, run_id: str) -> tuple[StoredRun, int] | None:
        """The run and the position of its last change, read at one instant."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            run = await self.get(run_id, conn)
            if run is None:
                return None
            seq = await conn.fetchval(
                f"SELECT coalesce(max(seq), 0) FROM {self._schema}.run_changes WHERE run_id = $1",
                uuid.UUID(run_id),
            )
        return run, seq

    async def changes_after(self, run_id: str, seq: int) -> list[tuple[int, bytes]]:
        """The run's changes after position ``seq``, in order."""
        rows = await self._pool.fetch(
            f"SELECT seq, change FROM {self._schema}.run_changes "
            "WHERE run_id = $1 AND seq > $2 ORDER BY seq",
            uuid.UUID(run_id),
            seq,
        )
        return [(row["seq"], row["change"]) for row in rows]

    async def lock(self, conn: DbConnection, run_id: str) -> StoredRun | None:
        """The run with its tasks, its row locked until the transaction ends."""
        row = await conn.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM {self._schema}.runs WHERE run_id = $1 FOR UPDATE",
            uuid.UUID(run_id),
        )
        return None if row is None else await self._with_tasks(conn, row)

    async def get(self, run_id: str, conn: DbConnection | None = None) -> StoredRun | None:
        """The run with its tasks, or None."""
        db = conn or self._pool
        row = await db.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM {self._schema}.runs WHERE run_id = $1", uuid.UUID(run_id)
        )
        if row is None:
            return None
        if conn is None:
            async with self._pool.acquire() as own:
                return await self._with_tasks(own, row)
        return await self._with_tasks(conn, row)

    async def newest(
        self,
        *,
        workflow_name: str,
        states: Sequence[int],
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoredRun]:
        """Runs newest first (without tasks), after the (created_at, run_id) ``after``."""
        rows = await self._pool.fetch(
            f"SELECT {_RUN_COLUMNS} FROM {self._schema}.runs "
            "WHERE ($1 = '' OR workflow_name = $1) "
            "AND (cardinality($2::smallint[]) = 0 OR state = ANY($2::smallint[])) "
            "AND ($3::timestamptz IS NULL OR (created_at, run_id) < ($3, $4::uuid)) "
            "ORDER BY created_at DESC, run_id DESC LIMIT $5",
            workflow_name,
            list(states),
            after[0] if after else None,
            uuid.UUID(after[1]) if after else None,
            limit,
        )
        return [_run(row) for row in rows]

    async def save(
        self,
        conn: DbConnection,
        run: StoredRun,
        changed: Sequence[TaskStatus],
    ) -> None:
        """Write the run's state and the tasks that changed."""
        s = self._schema
        await conn.execute(
            f"UPDATE {s}.runs SET state = $2, message = $3, started_at = $4, finished_at = $5 "
            "WHERE run_id = $1",
            uuid.UUID(run.run_id),
            run.state,
            run.message,
            run.started_at,
            run.finished_at,
        )
        await conn.executemany(
            f"UPDATE {s}.task_instances SET state = $3, attempt = $4, node_id = $5, "
            "outputs = $6, message = $7, due_at = $8, started_at = $9, finished_at = $10, "
            "requested = $11, limits = $12, reserved = $13, peak_usage = $14, evictions = $15, "
            "losses = $16 "
            "WHERE run_id = $1 AND task_id = $2",
            [(uuid.UUID(run.run_id), *_task_values(t)) for t in changed],
        )

    async def with_due_retries(self, now: datetime, limit: int) -> list[str]:
        """Ids of runs having a task whose retry backoff ended by ``now``."""
        rows = await self._pool.fetch(
            f"SELECT DISTINCT run_id FROM {self._schema}.task_instances "
            "WHERE due_at IS NOT NULL AND due_at <= $1 LIMIT $2",
            now,
            limit,
        )
        return [str(row["run_id"]) for row in rows]

    async def _with_tasks(self, conn: DbConnection, row: asyncpg.Record) -> StoredRun:
        tasks = await conn.fetch(
            f"SELECT {_TASK_COLUMNS} FROM {self._schema}.task_instances "
            "WHERE run_id = $1 ORDER BY position",
            row["run_id"],
        )
        return replace(_run(row), tasks=tuple(_task(t) for t in tasks))


def _run(row: asyncpg.Record) -> StoredRun:
    return StoredRun(
        run_id=str(row["run_id"]),
        workflow_name=row["workflow_name"],
        workflow_version=row["workflow_version"],
        state=row["state"],
        cause=RunCause.FromString(row["cause"]),
        params=json.loads(row["params"]),
        message=row["message"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lane=row["lane"],
        lane_limit=row["lane_limit"],
    )


def _task(row: asyncpg.Record) -> TaskStatus:
    outputs = row["outputs"]
    return TaskStatus(
        task_id=row["task_id"],
        state=row["state"],
        attempt=row["attempt"],
        node_id=row["node_id"],
        outputs=None if outputs is None else json.loads(outputs),
        message=row["message"],
        due_at=row["due_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        requested=_amounts(row["requested"]),
        limits=_amounts(row["limits"]),
        reserved=_amounts(row["reserved"]),
        peak_usage=None if row["peak_usage"] is None else Usage(**json.loads(row["peak_usage"])),
        evictions=row["evictions"],
        losses=row["losses"],
    )


def _amounts(column: str | None) -> Resources | None:
    return None if column is None else Resources(**json.loads(column))


def _json(value: Resources | Usage | None) -> str | None:
    return None if value is None else json.dumps(asdict(value))


def _task_values(task: TaskStatus) -> tuple[object, ...]:
    """Values in the order of ``_TASK_COLUMNS``."""
    return (
        task.task_id,
        task.state,
        task.attempt,
        task.node_id,
        None if task.outputs is None else json.dumps(task.outputs),
        task.message,
        task.due_at,
        task.started_at,
        task.finished_at,
        _json(task.requested),
        _json(task.limits),
        _json(task.reserved),
        _json(task.peak_usage),
        task.evictions,
        task.losses,
    )


class ScheduleStore:
    """The last tick of each cron schedule in ``schema``, in the caller's transaction."""

    def __init__(self, schema: str) -> None:
        self._schema = schema

    async def begin(
        self,
        db: asyncpg.Pool | DbConnection,
        workflow_name: str,
        expression: str,
        time_zone: str,
        now: datetime,
    ) -> None:
        """Start a schedule at ``now`` unless it exists: a new schedule runs from its
        next tick, not from ticks before it existed; a re-applied one keeps its place."""
        await db.execute(
            f"INSERT INTO {self._schema}.schedules "
            "(workflow_name, expression, time_zone, last_tick) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            workflow_name,
            expression,
            time_zone,
            now,
        )

    async def last_ticks(
        self, db: asyncpg.Pool | DbConnection
    ) -> dict[tuple[str, str, str], datetime]:
        """Every schedule's last tick by (workflow, expression, time zone), in one read,
        so a round of the cron loop locks only the schedules that have a tick due."""
        rows = await db.fetch(
            f"SELECT workflow_name, expression, time_zone, last_tick FROM {self._schema}.schedules"
        )
        return {
            (row["workflow_name"], row["expression"], row["time_zone"]): row["last_tick"]
            for row in rows
        }

    async def claim(
        self, conn: DbConnection, workflow_name: str, expression: str, time_zone: str
    ) -> datetime | None:
        """The schedule's last tick, its row locked; None when another replica holds it
        (or it was never begun)."""
        last: datetime | None = await conn.fetchval(
            f"SELECT last_tick FROM {self._schema}.schedules "
            "WHERE workflow_name = $1 AND expression = $2 AND time_zone = $3 "
            "FOR UPDATE SKIP LOCKED",
            workflow_name,
            expression,
            time_zone,
        )
        return last

    async def advance(
        self,
        conn: DbConnection,
        workflow_name: str,
        expression: str,
        time_zone: str,
        tick: datetime,
    ) -> None:
        await conn.execute(
            f"UPDATE {self._schema}.schedules SET last_tick = $4 "
            "WHERE workflow_name = $1 AND expression = $2 AND time_zone = $3",
            workflow_name,
            expression,
            time_zone,
            tick,
        )


class PartitionStore:
    """The partitions seen arriving, in ``schema``, for backfills over them."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def record(self, conn: DbConnection, arrived: ArrivedPartition) -> None:
        """Keep the latest announcement of the partition, in the caller's transaction."""
        await conn.execute(
            f"INSERT INTO {self._schema}.partitions "
            "(dataset, partition, uri, checksum, arrived_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (dataset, partition) DO UPDATE SET uri = EXCLUDED.uri, "
            "checksum = EXCLUDED.checksum, arrived_at = EXCLUDED.arrived_at",
            arrived.dataset,
            arrived.partition,
            arrived.uri,
            arrived.checksum,
            arrived.arrived_at,
        )

    async def arrived_between(
        self, dataset: str, start: datetime, end: datetime, limit: int
    ) -> list[ArrivedPartition]:
        """Partitions of ``dataset`` that arrived from ``start`` to ``end``, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT dataset, partition, uri, checksum, arrived_at FROM {self._schema}.partitions "
            "WHERE dataset = $1 AND arrived_at BETWEEN $2 AND $3 "
            "ORDER BY arrived_at, partition LIMIT $4",
            dataset,
            start,
            end,
            limit,
        )
        return [ArrivedPartition(**dict(row)) for row in rows]
