"""The throw-away stage a run works on: its own Postgres schema and Kafka topics.

Everything gets a unique name at the start and is dropped at the end, so a run
leaves nothing on the shared local stack and never sees another run's data. The
schema holds the core's tables (outbox, inbox) and the scheduler's, plus one table the
benchmark's handlers write to, standing for a service's own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from strata.core import kafka
from strata.core.migrations import migrate_service, quote_schema
from strata.core.postgres import create_pool
from strata.core.settings import KafkaSettings, PostgresSettings, load
from strata.core.topics import dead_letter_topic

MIGRATIONS = "strata.scheduler.migrations"
PARTITIONS = 3
"""Partitions of every benchmark topic, like most topics of the event catalog."""

STATE_TABLE = """
CREATE TABLE {schema}.applied (event_id uuid NOT NULL, run_id text NOT NULL, state int NOT NULL)
"""


@dataclass
class Stage:
    """Settings, a pool and a schema; topics are made on demand and deleted with the stage."""

    kafka: KafkaSettings
    pool: asyncpg.Pool
    schema: str
    run: str
    """Unique suffix of every name this run creates."""
    _admin: AIOKafkaAdminClient
    _topics: list[str] = field(default_factory=list)

    @property
    def quoted(self) -> str:
        return quote_schema(self.schema)

    async def topic(self, purpose: str, *, dead_letters: bool = False) -> str:
        """A new topic of :data:`PARTITIONS` partitions (and its dead-letter topic)."""
        name = f"bench.{purpose}.{self.run}"
        names = [name, dead_letter_topic(name)] if dead_letters else [name]
        await self._admin.create_topics(
            [NewTopic(n, PARTITIONS if n == name else 1, replication_factor=1) for n in names]
        )
        self._topics.extend(names)
        return name

    def group(self, purpose: str) -> str:
        """A consumer group nobody used yet: it reads its topic from the start."""
        return f"bench-{purpose}-{self.run}-{uuid.uuid4().hex[:6]}"

    async def close(self) -> None:
        """Delete the topics and drop the schema, then close the clients."""
        try:
            if self._topics:
                await self._admin.delete_topics(self._topics)
            await self.pool.execute(f"DROP SCHEMA IF EXISTS {self.quoted} CASCADE")
        finally:
            await self._admin.close()
            await self.pool.close()


@contextlib.asynccontextmanager
async def stage() -> AsyncIterator[Stage]:
    """Create the schema (migrated) and yield the stage; drop schema and topics after."""
    settings = load(KafkaSettings)
    pool = await create_pool(load(PostgresSettings))
    admin = kafka.admin(settings)
    run = uuid.uuid4().hex[:10]
    created = Stage(kafka=settings, pool=pool, schema=f"bench_{run}", run=run, _admin=admin)
    try:
        await admin.start()
        await migrate_service(pool, created.schema, MIGRATIONS)
        await pool.execute(STATE_TABLE.format(schema=created.quoted))
        yield created
    finally:
        await created.close()


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, object]) -> AsyncIterator[asyncio.Task[object]]:
    """Run ``work`` as a task for the block; cancel it after, re-raising what it failed with."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
