"""The streamer's SQL, in the service's own schema: the feature-view catalog (every
version kept), stream checkpoints with the offline partitions each covers, the
announced partitions of the datasets dataset-sourced views read, and training
sets.

Specs are stored as their proto bytes (the deterministic serialisation whose hash
identifies them); the name, version, hash and allowed groups are columns, so
listing, comparing and filtering by the caller's groups never decode a spec.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg
from google.protobuf.message import Message

from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.features.v1.features_pb2 import (
    FeatureViewApplied,
    FeatureViewDeleted,
    FeatureViewSpec,
    MaterializationFinished,
    MaterializeTrainingSetRequest,
)
from strata.core.inbox import claim
from strata.core.outbox import Outbox
from strata.core.rpc.auth import ADMIN_ROLE
from strata.core.versions import next_version, spec_sha256
from strata.streamer.domain.datasets import SourcePartition
from strata.streamer.domain.offline import FORMAT, LandedPartition
from strata.streamer.domain.training import TrainingSetState


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


@dataclass(frozen=True)
class Deleted:
    """What deleting a view removed from the catalog."""

    version: int
    """The version that was current."""
    versions: int
    """How many versions were removed."""


_SELECT = """
    SELECT v.spec, v.version, v.spec_sha256, v.applied_at, v.applied_by
    FROM {schema}.feature_views f
    JOIN {schema}.feature_view_versions v ON v.name = f.name
"""


def views_channel(schema: str) -> str:
    """The NOTIFY channel on which ``apply`` and ``delete`` name a view whose current
    version changed (:mod:`strata.streamer.current_views` listens to it)."""
    return f"strata_feature_views_{schema}"


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
        version is announced (FeatureViewApplied) in the same transaction, and
        named on :func:`views_channel`, which Postgres delivers at commit.
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
                await conn.execute("SELECT pg_notify($1, $2)", views_channel(s), spec.name)
            row = await conn.fetchrow(
                f"{self._select} WHERE f.name = $1 AND v.version = $2", spec.name, outcome.version
            )
        assert row is not None, "the version was stored or found just above"
        return Applied(_view(row), outcome.changed)

    async def delete(self, name: str, *, version: int, deleted_by: str) -> Deleted | None:
        """Remove ``name``, every version, its stream checkpoints and offline index, if its
        current version is still ``version`` (the one the caller was authorised against).

        None when the view is gone or another version was applied meanwhile. The
        view's row is locked as ``apply`` locks it, and FeatureViewDeleted is
        published in the same transaction. The Parquet files the index listed stay
        in the blob store: they are data, and training sets name them.
        """
        s = self._schema
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                f"SELECT current_version FROM {s}.feature_views WHERE name = $1 FOR UPDATE",
                name,
            )
            if current != version:
                return None
            for table in ("offline_partitions", "stream_checkpoints"):
                await conn.execute(f"DELETE FROM {s}.{table} WHERE name = $1", name)
            removed = await conn.fetchval(
                f"WITH gone AS (DELETE FROM {s}.feature_view_versions WHERE name = $1 "
                "RETURNING 1) SELECT count(*) FROM gone",
                name,
            )
            await conn.execute(f"DELETE FROM {s}.feature_views WHERE name = $1", name)
            await self._outbox.publish(
                conn, FeatureViewDeleted(name=name, version=version, deleted_by=deleted_by)
            )
            await conn.execute("SELECT pg_notify($1, $2)", views_channel(s), name)
        return Deleted(version, int(removed))

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

    async def history(self, name: str) -> list[StoredView]:
        """Every version of ``name``, oldest first."""
        rows = await self._pool.fetch(f"{self._select} WHERE f.name = $1 ORDER BY v.version", name)
        return [_view(row) for row in rows]

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
    """Stream checkpoints in ``schema`` (one row per view version) and the offline
    partitions each covers."""

    def __init__(self, pool: asyncpg.Pool, schema: str, outbox: Outbox) -> None:
        self._pool = pool
        self._schema = schema
        self._outbox = outbox

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

    async def save(
        self,
        name: str,
        version: int,
        checkpoint: Checkpoint,
        landed: Sequence[LandedPartition] = (),
    ) -> None:
        """Save ``checkpoint`` and record the partitions landed since the last one, together.

        Each partition is announced with DataArrived in the same transaction, so a
        partition is listed and announced exactly when the offsets after its rows
        are saved.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {self._schema}.stream_checkpoints (name, version, offsets, state) "
                "VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (name, version) DO UPDATE "
                "SET offsets = EXCLUDED.offsets, state = EXCLUDED.state, saved_at = now()",
                name,
                version,
                json.dumps({str(p): o for p, o in checkpoint.offsets.items()}),
                checkpoint.state,
            )
            for part in landed:
                await conn.execute(
                    f"INSERT INTO {self._schema}.offline_partitions (name, version, dataset, "
                    "partition, uri, row_count, size_bytes, checksum, start_time, end_time) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    name,
                    version,
                    part.dataset,
                    part.partition,
                    part.uri,
                    part.row_count,
                    part.size_bytes,
                    part.checksum,
                    part.start_time,
                    part.end_time,
                )
            await self._outbox.publish(
                conn,
                *(
                    DataArrived(
                        dataset=part.dataset,
                        partition=part.partition,
                        uri=part.uri,
                        row_count=part.row_count,
                        size_bytes=part.size_bytes,
                        checksum=part.checksum,
                        format=FORMAT,
                    )
                    for part in landed
                ),
            )

    async def partitions_of_versions(
        self, name: str, versions: Collection[int]
    ) -> list[LandedPartition]:
        """The offline partitions any of ``name``'s ``versions`` landed, by partition name."""
        rows = await self._pool.fetch(
            "SELECT dataset, partition, uri, row_count, size_bytes, checksum, start_time, "
            f"end_time FROM {self._schema}.offline_partitions "
            "WHERE name = $1 AND version = ANY($2::bigint[]) ORDER BY partition, version",
            name,
            list(versions),
        )
        return [LandedPartition(**dict(row)) for row in rows]

    async def partitions(self, name: str, version: int) -> list[LandedPartition]:
        """The offline partitions ``name`` version ``version`` landed, oldest hour first."""
        rows = await self._pool.fetch(
            "SELECT dataset, partition, uri, row_count, size_bytes, checksum, start_time, "
            f"end_time FROM {self._schema}.offline_partitions WHERE name = $1 AND version = $2 "
            "ORDER BY partition",
            name,
            version,
        )
        return [LandedPartition(**dict(row)) for row in rows]


async def announce(pool: asyncpg.Pool, outbox: Outbox, *messages: Message) -> None:
    """Publish facts that change no row of ours (a backfill's MaterializationFinished)
    through the outbox, so they reach Kafka as reliably as the others."""
    async with pool.acquire() as conn, conn.transaction():
        await outbox.publish(conn, *messages)


class DatasetStore:
    """The announced partitions of the datasets that dataset-sourced views read."""

    CONSUMER = "dataset-partitions"
    """Inbox consumer name of the DataArrived handler."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    async def record(
        self, partition: SourcePartition, row_count: int, size_bytes: int, event_id: str
    ) -> bool:
        """Record (or replace) ``partition`` unless event ``event_id`` was handled before;
        whether it was recorded now."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await claim(conn, self._schema, event_id, consumer=self.CONSUMER):
                return False
            await conn.execute(
                f"INSERT INTO {self._schema}.dataset_partitions (dataset, partition, uri, "
                "checksum, row_count, size_bytes, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (dataset, partition) DO UPDATE SET uri = EXCLUDED.uri, "
                "checksum = EXCLUDED.checksum, row_count = EXCLUDED.row_count, "
                "size_bytes = EXCLUDED.size_bytes, event_id = EXCLUDED.event_id, "
                "arrived_at = now()",
                partition.dataset,
                partition.partition,
                partition.uri,
                partition.checksum,
                row_count,
                size_bytes,
                event_id,
            )
        return True

    async def partitions(self, dataset: str) -> list[SourcePartition]:
        """The recorded partitions of ``dataset``, by partition name (their arrival order)."""
        rows = await self._pool.fetch(
            f"SELECT dataset, partition, uri, checksum FROM {self._schema}.dataset_partitions "
            'WHERE dataset = $1 ORDER BY partition COLLATE "C"',
            dataset,
        )
        return [SourcePartition(**dict(row)) for row in rows]


@dataclass(frozen=True)
class ViewVersion:
    """A view version a training set reads, with the groups allowed to read it then."""

    name: str
    version: int
    allowed_groups: tuple[str, ...]


@dataclass(frozen=True)
class PartitionRead:
    """An offline partition a training set read."""

    dataset: str
    partition: str
    checksum: str


@dataclass(frozen=True)
class StoredTrainingSet:
    """A training set and the state of the job building it."""

    training_set_id: str
    request: MaterializeTrainingSetRequest
    feature_views: tuple[ViewVersion, ...]
    state: TrainingSetState
    progress: float
    label_rows: int
    rows_written: int
    output_uri: str
    checksum: str
    partitions: tuple[PartitionRead, ...]
    message: str
    created_at: datetime
    finished_at: datetime | None


class TrainingSetStore:
    """Training sets in ``schema``; each method is one transaction."""

    LEASE = 600.0
    """Seconds a claimed job is its streamer's; after that another claims it again."""

    def __init__(self, pool: asyncpg.Pool, schema: str, outbox: Outbox) -> None:
        self._pool = pool
        self._table = f"{schema}.training_sets"
        self._outbox = outbox

    async def create(
        self,
        training_set_id: str,
        request: MaterializeTrainingSetRequest,
        views: Sequence[ViewVersion],
        output_uri: str,
    ) -> StoredTrainingSet:
        """Store a PENDING training set, or return the one the same ``request_id`` started."""
        row = await self._pool.fetchrow(
            f"INSERT INTO {self._table} (id, request_id, request, feature_views, state, "
            "output_uri) VALUES ($1, $2, $3, $4::jsonb, $5, $6) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING *",
            training_set_id,
            request.request_id or None,
            request.SerializeToString(deterministic=True),
            json.dumps([asdict(view) for view in views]),
            TrainingSetState.PENDING.value,
            output_uri,
        )
        if row is None:
            row = await self._pool.fetchrow(
                f"SELECT * FROM {self._table} WHERE request_id = $1", request.request_id
            )
        assert row is not None, "the training set was stored or found just above"
        return _training_set(row)

    async def by_request(self, request_id: str) -> StoredTrainingSet | None:
        """The training set a request with ``request_id`` started, if any."""
        row = await self._pool.fetchrow(
            f"SELECT * FROM {self._table} WHERE request_id = $1", request_id
        )
        return None if row is None else _training_set(row)

    async def get(self, training_set_id: str) -> StoredTrainingSet | None:
        row = await self._pool.fetchrow(
            f"SELECT * FROM {self._table} WHERE id = $1", training_set_id
        )
        return None if row is None else _training_set(row)

    async def claim(self) -> StoredTrainingSet | None:
        """The oldest job to build (pending, or running with its lease passed), now RUNNING."""
        row = await self._pool.fetchrow(
            f"UPDATE {self._table} SET state = $1, "
            "lease_until = now() + make_interval(secs => $2) WHERE id = ("
            f"SELECT id FROM {self._table} "
            "WHERE state = $3 OR (state = $1 AND lease_until < now()) "
            "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
            TrainingSetState.RUNNING.value,
            self.LEASE,
            TrainingSetState.PENDING.value,
        )
        return None if row is None else _training_set(row)

    async def progress(self, training_set_id: str, progress: float, label_rows: int) -> None:
        await self._pool.execute(
            f"UPDATE {self._table} SET progress = $2, label_rows = $3 WHERE id = $1",
            training_set_id,
            progress,
            label_rows,
        )

    async def succeed(
        self,
        training_set_id: str,
        rows_written: int,
        checksum: str,
        partitions: Sequence[PartitionRead],
        finished: Sequence[MaterializationFinished],
    ) -> None:
        """Mark the job SUCCEEDED and announce what it materialised, together."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"UPDATE {self._table} SET state = $2, progress = 1, rows_written = $3, "
                "checksum = $4, partitions = $5::jsonb, finished_at = now(), lease_until = NULL "
                "WHERE id = $1",
                training_set_id,
                TrainingSetState.SUCCEEDED.value,
                rows_written,
                checksum,
                json.dumps([asdict(partition) for partition in partitions]),
            )
            await self._outbox.publish(conn, *finished)

    async def fail(self, training_set_id: str, message: str) -> None:
        await self._pool.execute(
            f"UPDATE {self._table} SET state = $2, message = $3, finished_at = now(), "
            "lease_until = NULL WHERE id = $1",
            training_set_id,
            TrainingSetState.FAILED.value,
            message,
        )


def _training_set(row: asyncpg.Record) -> StoredTrainingSet:
    views = json.loads(row["feature_views"])
    partitions = json.loads(row["partitions"])
    return StoredTrainingSet(
        training_set_id=str(row["id"]),
        request=MaterializeTrainingSetRequest.FromString(row["request"]),
        feature_views=tuple(
            ViewVersion(v["name"], v["version"], tuple(v["allowed_groups"])) for v in views
        ),
        state=TrainingSetState(row["state"]),
        progress=row["progress"],
        label_rows=row["label_rows"],
        rows_written=row["rows_written"],
        output_uri=row["output_uri"],
        checksum=row["checksum"],
        partitions=tuple(PartitionRead(**p) for p in partitions),
        message=row["message"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )
