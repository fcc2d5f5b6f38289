"""The scheduler's SQL: workflows and their versions, in the service's own schema.

Specs are stored as their proto bytes (the deterministic serialisation whose hash
identifies them); everything else is a column, so listing and comparing never
decode a spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from strata.api.scheduler.v1.scheduler_pb2 import WorkflowSpec
from strata.scheduler.domain.versions import next_version, spec_sha256


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
