"""Removing what a run left on the stack: online values, offline partitions, catalog rows.

A run applies two views to the streamer. FeatureService has no call that deletes
a view yet, and a view left in the catalog is streamed again by every later
streamer: it restores the view's checkpoint at start-up and waits for its deleted
topic, which would load the next run's measurements. So once the run's streamer
has stopped, the benchmark deletes its own views' rows (only those, by name)
from every table of the streamer's schema that has a ``name`` column, children
before parents, and the Parquet partitions its streams landed in the blob store.
This is a benchmark's clean-up, not a pattern for services: services never touch
another's tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import redis.asyncio

from strata.core.blobs import open_blob_store
from strata.core.postgres import create_pool
from strata.core.settings import BlobSettings, PostgresSettings, load
from strata.transforms.definition import FeatureView
from strata.transforms.online import key_prefix

SCHEMA = "streamer"
"""The streamer's schema: its service name (``strata.streamer.__main__.spec()``)."""


async def forget_online(client: redis.asyncio.Redis, views: Sequence[FeatureView]) -> None:
    """Delete the views' online values (the keys under ``key_prefix(view)``)."""
    for view in views:
        keys = [key async for key in client.scan_iter(f"{key_prefix(view)}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.unlink(*keys[start : start + 1000])


async def forget_offline(topics: Sequence[str]) -> None:
    """Delete what the streamer landed offline for the topics (``offline/<topic>/``)."""
    async with open_blob_store(load(BlobSettings)) as blobs:
        for topic in topics:
            for key in await blobs.list(f"offline/{topic}/"):
                await blobs.delete(key)


async def forget_views(names: Sequence[str]) -> list[str]:
    """Delete the named views from the streamer's catalog; the tables it could not clear."""
    pool = await create_pool(load(PostgresSettings))
    try:
        tables = await pool.fetch(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND column_name = 'name'",
            SCHEMA,
        )
        pending = [str(row["table_name"]) for row in tables]
        for _ in range(len(pending)):
            blocked = []
            for table in pending:
                try:
                    await pool.execute(
                        f'DELETE FROM "{SCHEMA}"."{table}" WHERE name = ANY($1::text[])',
                        list(names),
                    )
                except asyncpg.ForeignKeyViolationError:
                    blocked.append(table)
            pending = blocked
            if not pending:
                break
        return pending
    finally:
        await pool.close()
