"""The context a service's servicers, handlers and loops are built from.

:func:`open_context` opens what the service declared (a Postgres pool with its
migrations applied, the bus, Redis, the blob store) once their servers answer, and
closes them in reverse order. A service reaches them only through the context it
is handed, never through module-level state, so two services (or two tests) in
one process never share a client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import redis.asyncio
import structlog
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from strata.core import redis as redis_clients
from strata.core.blobs import BlobStore, open_blob_store
from strata.core.bus import Bus
from strata.core.errors import ConfigError
from strata.core.metrics import Metrics
from strata.core.migrations import migrate_service
from strata.core.outbox import Outbox
from strata.core.postgres import create_pool
from strata.core.reachability import probe
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.core.runtime.settings import RuntimeSettings
from strata.core.runtime.spec import ServiceSpec

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")

HEALTH_KEY = "strata-health-probe"
"""A key whose existence the health ping asks for: one small request, whatever the store holds."""


@dataclass(frozen=True)
class ServiceContext:
    """What one service process holds; an attribute the service did not declare raises."""

    name: str
    settings: RuntimeSettings
    metrics: Metrics
    _pool: asyncpg.Pool | None = None
    _bus: Bus | None = None
    _redis: redis.asyncio.Redis | None = None
    _redis_reads: MultiplexedConnection | None = None
    _blobs: BlobStore | None = None
    _outbox: Outbox | None = None
    _component_health: Callable[[str, bool], Awaitable[None]] | None = None

    @property
    def schema(self) -> str:
        """The Postgres schema the service owns: its name."""
        return self.name

    @property
    def pool(self) -> asyncpg.Pool:
        return self._need(self._pool, "pool", "POSTGRES")

    @property
    def bus(self) -> Bus:
        return self._need(self._bus, "bus", "KAFKA")

    @property
    def redis(self) -> redis.asyncio.Redis:
        return self._need(self._redis, "redis", "REDIS")

    @property
    def redis_reads(self) -> MultiplexedConnection:
        """The connection for reads on a request's path (online features): every
        concurrent call pipelined on it, cheaper per call than :attr:`redis`'s pool."""
        return self._need(self._redis_reads, "redis_reads", "REDIS")

    @property
    def blobs(self) -> BlobStore:
        return self._need(self._blobs, "blobs", "BLOBS")

    @property
    def outbox(self) -> Outbox:
        """Writes events in the caller's transaction: ``await ctx.outbox.publish(conn, event)``."""
        if self._outbox is None:
            raise ConfigError(f"service {self.name!r} has no outbox: set outbox=True in its spec")
        return self._outbox

    async def component_health(self, name: str, serving: bool) -> None:
        """Report one part of the service SERVING or NOT_SERVING under the gRPC health name
        ``name`` (``strata.provisioner.provider.kubernetes``), the service's own health
        unchanged; a context without a server (a test's) reports nowhere."""
        if self._component_health is not None:
            await self._component_health(name, serving)

    def _need(self, value: T | None, what: str, dependency: str) -> T:
        if value is None:
            raise ConfigError(
                f"service {self.name!r} has no {what}: add {dependency} to the "
                "requires (or degrades) of its ServiceSpec"
            )
        return value

    async def ping(self, component: str, timeout: float) -> None:
        """Ping ``component`` through the service's own client (no new connection)."""
        s = self.settings
        if component == "Postgres":
            await probe(component, s.postgres.address, self._select_one, timeout, _PG_FAILURES)
        elif component == "Kafka":
            await probe(component, s.kafka.bootstrap, self._metadata, timeout, _KAFKA_FAILURES)
        elif component == "Redis":
            await probe(component, s.redis.address, self.redis.ping, timeout, _REDIS_FAILURES)
        elif component == "Blob store":
            await probe(component, _blob_address(s), self._head, timeout, (Exception,))
        else:
            raise ValueError(f"no client of service {self.name!r} can ping {component!r}")

    async def _select_one(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def _metadata(self) -> None:
        await self.bus.producer.client.fetch_all_metadata()

    async def _head(self) -> None:
        await self.blobs.exists(HEALTH_KEY)


_PG_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)
_KAFKA_FAILURES: tuple[type[BaseException], ...] = (KafkaError, OSError)
_REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)


def _blob_address(settings: RuntimeSettings) -> str:
    blobs = settings.blobs
    return blobs.endpoint_url if blobs.backend == "s3" else str(blobs.root)


@asynccontextmanager
async def open_context(
    spec: ServiceSpec, settings: RuntimeSettings, metrics: Metrics
) -> AsyncIterator[ServiceContext]:
    """Open the clients ``spec`` declares, apply its migrations, register its handlers.

    The bus starts after the handlers are registered, so no event arrives before
    its handler. Everything opened is closed in reverse order on exit.
    """
    async with AsyncExitStack() as stack:
        parts: dict[str, Any] = {}
        if spec.uses("Postgres"):
            parts["_pool"] = await _open_pool(spec, settings, stack)
        if spec.uses("Redis"):
            parts["_redis"] = await _open_redis(settings, stack)
            parts["_redis_reads"] = reads = MultiplexedConnection(settings.redis)
            stack.push_async_callback(reads.aclose)
        if spec.uses("Blob store"):
            parts["_blobs"] = await _open_blobs(settings, stack)
        if spec.uses("Kafka"):
            parts["_bus"] = bus = _new_bus(spec, settings, metrics)
            if spec.outbox:
                parts["_outbox"] = Outbox(spec.name, producer=bus.name)
        context = ServiceContext(spec.name, settings, metrics, **parts)
        if context._bus is not None:
            for register in spec.handlers:
                register(context)
            await context._bus.start()
            stack.push_async_callback(context._bus.stop)
        yield context


async def _open_pool(
    spec: ServiceSpec, settings: RuntimeSettings, stack: AsyncExitStack
) -> asyncpg.Pool:
    pool = await create_pool(settings.postgres)
    stack.push_async_callback(pool.close)
    if spec.migrations:
        applied = await migrate_service(pool, spec.name, spec.migrations)
        log.info("schema ready", schema=spec.name, applied=applied)
    return pool


async def _open_redis(settings: RuntimeSettings, stack: AsyncExitStack) -> redis.asyncio.Redis:
    client = redis_clients.client(settings.redis)
    stack.push_async_callback(client.aclose)
    # Connect now, as the pool does for Postgres: a dead server shows at start.
    address = settings.redis.address
    await probe("Redis", address, client.ping, settings.service.ping_timeout, _REDIS_FAILURES)
    return client


async def _open_blobs(settings: RuntimeSettings, stack: AsyncExitStack) -> BlobStore:
    store = open_blob_store(settings.blobs)
    stack.push_async_callback(store.close)
    return store


def _new_bus(spec: ServiceSpec, settings: RuntimeSettings, metrics: Metrics) -> Bus:
    return Bus(spec.name, kafka=settings.kafka, settings=settings.bus, metrics=metrics)
