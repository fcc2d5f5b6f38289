"""Strata's side: the provisioner's own placement round against a real Postgres.

A schema of its own (``bench_placement_<id>``) gets the provisioner's migrations
(the core's outbox included). The nodes go in as READY rows heard from just now,
the burst as ``pending`` rows holding their ``TaskRequested`` bytes, both in bulk
SQL, as the provisioner's Connect and TaskRequested handlers would have left them.
Then :meth:`strata.provisioner.placing.Placement.round` runs as the service runs
it: read the queue and the nodes, place, and in the same transaction move every
placed attempt to its node and put its ``TaskPlaced`` into the outbox. The clock
runs from the call to its return, after the commit; every placement counted is
then read back from ``placements``, so each one was durable.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.placement.plan import NODE_CAPACITY, REQUESTS, TASKS_PER_RUN
from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources as ResourcesProto
from strata.api.provisioner.v1.provisioner_pb2 import NODE_STATE_READY
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.metrics import Metrics
from strata.core.migrations import migrate_service, quote_schema
from strata.core.outbox import Outbox
from strata.core.runtime.context import ServiceContext
from strata.core.runtime.settings import RuntimeSettings
from strata.provisioner.domain.placement import Node, place
from strata.provisioner.domain.queues import DEFAULT_QUEUE
from strata.provisioner.placing import Placement
from strata.provisioner.store import attempt_of

MIGRATIONS = "strata.provisioner.migrations"
LEASE = timedelta(minutes=10)
"""Lease the round uses: every node was heard from just before, so all take work."""
BURST_QUEUE, BURST_WORKFLOW, BURST_USER = DEFAULT_QUEUE, "bench-burst", "bench"


@dataclass(frozen=True)
class Round:
    """One placement round over the whole burst."""

    nodes: int
    attempts: int
    placed: int
    """Rows in ``placements`` once the round returned."""
    seconds: float
    """Call to return of ``Placement.round`` (read, place, write, commit)."""

    @property
    def rate(self) -> float:
        return self.placed / self.seconds


class StrataSide:
    """A provisioner schema of its own; :meth:`drop` removes it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.schema = f"bench_placement_{uuid.uuid4().hex[:8]}"
        self._s = quote_schema(self.schema)
        self._context = ServiceContext(
            self.schema,
            RuntimeSettings.load(),
            Metrics(),
            _pool=pool,
            _outbox=Outbox(self.schema, producer="provisioner"),
        )

    async def create(self) -> None:
        await migrate_service(self._pool, self.schema, MIGRATIONS)

    async def drop(self) -> None:
        await self._pool.execute(f"DROP SCHEMA IF EXISTS {self._s} CASCADE")

    async def round(self, nodes: int, attempts: int) -> Round:
        """Empty the schema, add ``nodes`` and the burst, time one placement round."""
        await self._reset(nodes, attempts)
        placement = Placement(self._context, LEASE)
        started = time.perf_counter()
        await placement.round()
        seconds = time.perf_counter() - started
        placed = await self._pool.fetchval(f"SELECT count(*) FROM {self._s}.placements")
        if placed != attempts:
            waiting = await self._pool.fetchval(
                f"SELECT min(waiting_for) FROM {self._s}.pending WHERE waiting_for <> ''"
            )
            raise RuntimeError(
                f"the round placed {placed} of {attempts} attempts on {nodes} nodes "
                f"(one waits for: {waiting!r}); every attempt fits, so all must be placed"
            )
        return Round(nodes, attempts, placed, seconds)

    async def _reset(self, nodes: int, attempts: int) -> None:
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            # TRUNCATE, not DELETE: no dead rows of the last round for this one to skip.
            await conn.execute(
                f"TRUNCATE {self._s}.outbox, {self._s}.placements, {self._s}.pending, "
                f"{self._s}.nodes"
            )
            await conn.execute(
                f"INSERT INTO {self._s}.nodes (node_id, hostname, state, cpu_millis, "
                "memory_bytes, gpus, labels, agent_version, warm_bundles, session_id, "
                "joined_at, last_seen_at) "
                "SELECT id, id, $2, $3, $4, 0, $5::jsonb, 'bench', '{}', gen_random_uuid(), "
                "$6, $6 FROM unnest($1::text[]) AS id",
                [node_name(i) for i in range(nodes)],
                NODE_STATE_READY,
                NODE_CAPACITY.cpu_millis,
                NODE_CAPACITY.memory_bytes,
                json.dumps({}),
                now,
            )
            requests = [burst_request(i) for i in range(attempts)]
            # As QueueStore.enqueue leaves them, in arrival order (``sequence``).
            await conn.execute(
                f"INSERT INTO {self._s}.pending (run_id, task_id, attempt, queue, priority, "
                "request, workflow_name, user_name) "
                "SELECT r, t, 1, $4, 0, q, $5, $6 FROM unnest($1::text[], $2::text[], "
                "$3::bytea[]) WITH ORDINALITY AS u(r, t, q, n) ORDER BY n",
                [r.attempt.run_id for r in requests],
                [r.attempt.task_id for r in requests],
                [r.SerializeToString(deterministic=True) for r in requests],
                BURST_QUEUE,
                BURST_WORKFLOW,
                BURST_USER,
            )
        await self._pool.execute(f"ANALYZE {self._s}.nodes")
        await self._pool.execute(f"ANALYZE {self._s}.pending")


def node_name(index: int) -> str:
    """The same node names on both sides."""
    return f"bench-node-{index:05d}"


def burst_request(index: int) -> TaskRequested:
    """Attempt ``index`` of the burst: runs of :data:`TASKS_PER_RUN` tasks, requests in turn."""
    run, task = divmod(index, TASKS_PER_RUN)
    asked = REQUESTS[index % len(REQUESTS)]
    return TaskRequested(
        attempt=TaskAttemptRef(
            run_id=f"bench-run-{run:05d}", task_id=f"task-{task:03d}", attempt=1
        ),
        workflow_name=BURST_WORKFLOW,
        entrypoint="bench:noop",
        bundle=BundleRef(sha256="0" * 64),
        resources=ResourcesProto(
            cpu_millis=asked.cpu_millis, memory_bytes=asked.memory_bytes, gpus=asked.gpus
        ),
        queue=BURST_QUEUE,
        user=BURST_USER,
    )


def place_alone(nodes: int, attempts: int) -> float:
    """CPU seconds :func:`~strata.provisioner.domain.placement.place` takes for the burst
    on ``nodes`` empty nodes, without the database: the round's pure part."""
    fleet = [Node(node_name(i), NODE_CAPACITY) for i in range(nodes)]
    burst = [attempt_of(burst_request(i), sequence=i) for i in range(attempts)]
    started = time.process_time()
    plan = place(fleet, burst)
    seconds = time.process_time() - started
    if len(plan.placed) != attempts:
        raise RuntimeError(f"place() placed {len(plan.placed)} of {attempts} attempts")
    return seconds
