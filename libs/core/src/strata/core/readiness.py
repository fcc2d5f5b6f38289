"""The servers a service depends on, and how it waits for them before its first start.

A :class:`Dependency` is a server of the stack (Kafka, Postgres, Redis, the blob
store) with the one-off ``ping`` of its client module, used while the service has
no client of its own yet: :func:`until_reachable` pings until all answer, with one
warning line per failed ping that names the server and its address. Once the
service runs, its health pings go through its own clients
(:meth:`strata.core.runtime.ServiceContext.ping`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from pydantic_settings import BaseSettings
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from strata.core.settings import BlobSettings, KafkaSettings, PostgresSettings, RedisSettings

log = structlog.stdlib.get_logger(__name__)

S = TypeVar("S", bound=BaseSettings)


@dataclass(frozen=True)
class Dependency(Generic[S]):
    """A server a service needs before it can answer: its settings and how to ping it."""

    component: str
    settings: type[S]
    ping: Callable[[S, float], Awaitable[None]]


async def _ping_kafka(settings: KafkaSettings, ping_timeout: float) -> None:
    from strata.core import kafka  # imported when used: each service loads only its clients

    await kafka.ping(settings, ping_timeout)


async def _ping_postgres(settings: PostgresSettings, ping_timeout: float) -> None:
    from strata.core import postgres

    await postgres.ping(settings, ping_timeout)


async def _ping_redis(settings: RedisSettings, ping_timeout: float) -> None:
    from strata.core import redis

    await redis.ping(settings, ping_timeout)


async def _ping_blobs(settings: BlobSettings, ping_timeout: float) -> None:
    from strata.core import blobs

    await blobs.ping(settings, ping_timeout)


KAFKA = Dependency("Kafka", KafkaSettings, _ping_kafka)
POSTGRES = Dependency("Postgres", PostgresSettings, _ping_postgres)
REDIS = Dependency("Redis", RedisSettings, _ping_redis)
BLOBS = Dependency("Blob store", BlobSettings, _ping_blobs)


@dataclass(frozen=True)
class Probe:
    """One dependency, with its settings and how long a ping may take."""

    dependency: Dependency[Any]
    settings: BaseSettings
    seconds: float

    @property
    def component(self) -> str:
        return self.dependency.component

    async def ping(self) -> None:
        await self.dependency.ping(self.settings, self.seconds)


async def until_reachable(probes: Sequence[Probe]) -> None:
    """Return once every probe answered (each retried with backoff until it does)."""
    await asyncio.gather(*(_reach(probe) for probe in probes))


async def _reach(probe: Probe) -> None:
    """Ping until it answers, with exponential backoff (0.5 s doubling up to 10 s, jittered)."""
    retrying = AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
        retry=retry_if_exception_type(Exception),
        before_sleep=_warn_unreachable(probe.component),
    )
    async for attempt in retrying:
        with attempt:
            await probe.ping()
    log.info("dependency answers", component=probe.component)


def _warn_unreachable(component: str) -> Callable[[RetryCallState], None]:
    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(str(error) or repr(error), component=component, retry_in=round(wait, 1))

    return warn
