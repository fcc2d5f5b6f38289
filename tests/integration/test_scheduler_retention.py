"""Run changes pruned after the retention, on a real ``python -m strata.scheduler``.

WatchRun streams a run's changes from ``run_changes``; without pruning that table
grows by every change of every run forever. The scheduler here keeps the changes
of a finished run for one second (``STRATA_SCHEDULER_CHANGES_RETENTION=PT1S``).
What a team relies on: the changes of a finished run go once the retention passed,
those of a run still going stay, and WatchRun on the finished run still gives its
snapshot and ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping

import asyncpg
import pytest
from scheduler_peer import DEV, Cluster
from scheduler_peer import name as _name
from scheduler_peer import run_until as _run_until
from scheduler_peer import task as _task

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.settings import PostgresSettings, load

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""


@pytest.fixture(scope="module")
def scheduler_settings() -> Mapping[str, str]:
    """Changes of finished runs kept one second: the test waits for them to go."""
    return {"STRATA_SCHEDULER_CHANGES_RETENTION": "PT1S"}


@pytest.fixture
async def db() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(load(PostgresSettings).dsn)
    yield conn
    await conn.close()


async def test_the_changes_of_a_run_finished_longer_ago_than_the_retention_are_pruned(
    client: SchedulerServiceStub, cluster: Cluster, db: asyncpg.Connection
) -> None:
    spec = pb.WorkflowSpec(name=_name("retained"), tasks=[_task("only")])
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)
    going, finished = [
        (await client.TriggerRun(pb.TriggerRunRequest(workflow_name=spec.name), metadata=DEV)).run
        for _ in range(2)
    ]
    request = await cluster.next_request(finished.run_id)
    await cluster.start(request.attempt)
    await cluster.finish(request.attempt)
    await _run_until(client, finished.run_id, pb.RUN_STATE_SUCCEEDED)

    async with asyncio.timeout(BOUND):
        while True:
            if not await _changes(db, finished.run_id):
                break
            await asyncio.sleep(0.2)
    assert await _changes(db, going.run_id) > 0

    watched = [
        reply
        async for reply in client.WatchRun(pb.WatchRunRequest(run_id=finished.run_id), metadata=DEV)
    ]
    assert [w.WhichOneof("change") for w in watched] == ["snapshot"]
    assert watched[0].snapshot.state == pb.RUN_STATE_SUCCEEDED


async def _changes(db: asyncpg.Connection, run_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM scheduler.run_changes WHERE run_id = $1", uuid.UUID(run_id)
    )
    return count
