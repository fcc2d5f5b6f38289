"""The streamer's SQL: the feature-view catalog, every version kept, in its own schema.

Specs are stored as their proto bytes (the deterministic serialisation whose hash
identifies them); the name, version, hash and allowed groups are columns, so
listing, comparing and filtering by the caller's groups never decode a spec.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from strata.api.features.v1.features_pb2 import FeatureViewApplied, FeatureViewSpec
from strata.core.outbox import Outbox
from strata.core.rpc.auth import ADMIN_ROLE
from strata.core.versions import next_version, spec_sha256


@dataclass(frozen=True)
class StoredView:
    """One version of a feature view as stored."""

    spec: FeatureViewSpec
    version: int
    spec_sha256: str
    applied_at: datetime
    applied_by: str


@dataclass(frozen=True)
class Applied:
    view: StoredView
    changed: bool


_SELECT = """
    SELECT v.spec, v.version, v.spec_sha256, v.applied_at, v.applied_by
    FROM {schema}.feature_views f
    JOIN {schema}.feature_view_versions v ON v.name = f.name
"""


class ViewStore:
    """Feature views in ``schema``; each method is one transaction."""

    def __init__(self, pool: asyncpg.Pool, schema: str, outbox: Outbox) -> None:
        self._pool = pool
        self._schema = schema
        self._outbox = outbox
        self._select = _SELECT.format(schema=schema)

    async def apply(self, spec: FeatureViewSpec, *, applied_by: str) -> Applied:
        """Store ``spec`` as the next version unless it equals the current one.

        The view's row is locked for the transaction, so concurrent applies of one
        name get consecutive versions and an identical spec never gets two. A new
        version is announced (FeatureViewApplied) in the same transaction.
        """
        sha = spec_sha256(spec)
        s = self._schema
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {s}.feature_views (name, current_version) VALUES ($1, 0) "
                "ON CONFLICT (name) DO NOTHING",
                spec.name,
            )
            current = await conn.fetchrow(
                f"SELECT f.current_version, v.spec_sha256 FROM {s}.feature_views f "
                f"LEFT JOIN {s}.feature_view_versions v "
                "ON v.name = f.name AND v.version = f.current_version "
                "WHERE f.name = $1 FOR UPDATE OF f",
                spec.name,
            )
            assert current is not None, "the row was inserted or locked just above"
            existing = current["current_version"] or None
            outcome = next_version(existing, current["spec_sha256"], sha)
            if outcome.changed:
                await conn.execute(
                    f"INSERT INTO {s}.feature_view_versions (name, version, spec, spec_sha256, "
                    "allowed_groups, applied_by) VALUES ($1, $2, $3, $4, $5, $6)",
                    spec.name,
                    outcome.version,
                    spec.SerializeToString(deterministic=True),
                    sha,
                    list(spec.allowed_groups),
                    applied_by,
                )
                await conn.execute(
                    f"UPDATE {s}.feature_views SET current_version = $2, updated_at = now() "
                    "WHERE name = $1",
                    spec.name,
                    outcome.version,
                )
                await self._outbox.publish(
                    conn,
                    FeatureViewApplied(
                        name=spec.name,
                        version=outcome.version,
                        spec_sha256=sha,
                        previous_version=existing or 0,
                    ),
                )
            row = await conn.fetchrow(
                f"{self._select} WHERE f.name = $1 AND v.version = $2", spec.name, outcome.version
            )
        assert row is not None, "the version was stored or found just above"
        return Applied(_view(row), outcome.changed)

    async def get(self, name: str, version: int = 0) -> StoredView | None:
        """Version ``version`` of ``name`` (0: the current one), or None."""
        if version:
            row = await self._pool.fetchrow(
                f"{self._select} WHERE f.name = $1 AND v.version = $2", name, version
            )
        else:
            row = await self._pool.fetchrow(
                f"{self._select} WHERE f.name = $1 AND v.version = f.current_version", name
            )
        return None if row is None else _view(row)

    async def current_of(self, names: Collection[str]) -> dict[str, StoredView]:
        """The current versions of those of ``names`` that exist, in one query."""
        rows = await self._pool.fetch(
            f"{self._select} WHERE f.name = ANY($1::text[]) AND v.version = f.current_version",
            list(names),
        )
        return {row_view.spec.name: row_view for row_view in map(_view, rows)}

    async def all_current(self) -> list[StoredView]:
        """The current version of every view (what the streams follow)."""
        rows = await self._pool.fetch(
            f"{self._select} WHERE v.version = f.current_version ORDER BY f.name"
        )
        return [_view(row) for row in rows]

    async def list(self, *, after: str, limit: int, groups: Collection[str]) -> list[StoredView]:
        """Current versions readable by a caller in ``groups``, named after ``after``, by name.

        The rule is :func:`strata.streamer.domain.access.may_read`, applied in the
        query so a page is full even when many views are hidden from the caller.
        """
        rows = await self._pool.fetch(
            f"{self._select} WHERE v.version = f.current_version AND f.name > $1 "
            "AND ($3 OR cardinality(v.allowed_groups) = 0 OR v.allowed_groups && $4::text[]) "
            "ORDER BY f.name LIMIT $2",
            after,
            limit,
            ADMIN_ROLE in groups,
            list(groups),
        )
        return [_view(row) for row in rows]


def _view(row: asyncpg.Record) -> StoredView:
    return StoredView(
        spec=FeatureViewSpec.FromString(row["spec"]),
        version=row["version"],
        spec_sha256=row["spec_sha256"],
        applied_at=row["applied_at"],
        applied_by=row["applied_by"],
    )


@dataclass(frozen=True)
class Checkpoint:
    """Where a view version's stream stands: next offset per partition, and window state."""

    offsets: dict[int, int]
    state: bytes


class CheckpointStore:
    """Stream checkpoints in ``schema``, one row per view version."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def load(self, name: str, version: int) -> Checkpoint | None:
        row = await self._pool.fetchrow(
            f"SELECT offsets, state FROM {self._schema}.stream_checkpoints "
            "WHERE name = $1 AND version = $2",
            name,
            version,
        )
        if row is None:
            return None
        offsets = {int(p): int(o) for p, o in json.loads(row["offsets"]).items()}
        return Checkpoint(offsets, bytes(row["state"]))

    async def save(self, name: str, version: int, checkpoint: Checkpoint) -> None:
        await self._pool.execute(
            f"INSERT INTO {self._schema}.stream_checkpoints (name, version, offsets, state) "
            "VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (name, version) DO UPDATE "
            "SET offsets = EXCLUDED.offsets, state = EXCLUDED.state, saved_at = now()",
            name,
            version,
            json.dumps({str(p): o for p, o in checkpoint.offsets.items()}),
            checkpoint.state,
        )
