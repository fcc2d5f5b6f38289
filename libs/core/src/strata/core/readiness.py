"""What a service waits for before it reports SERVING, and how it keeps watching.

A :class:`Dependency` is a server of the stack (Kafka, Postgres, Redis, the blob
store) with the ``ping`` of its client module. :func:`keep_health` turns their
answers into the gRPC health of the service: NOT_SERVING until all answer, with
one warning line per failed ping that names the server and its address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from pydantic_settings import BaseSettings
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from strata.core.rpc.server import RpcServer
from strata.core.settings import BlobSettings, KafkaSettings, PostgresSettings, RedisSettings

log = structlog.stdlib.get_logger(__name__)

S = TypeVar("S", bound=BaseSettings)

Lifespan = Callable[[], AbstractAsyncContextManager[object]]
"""Opens what the service holds (pools, consumers) once its dependencies answer; closes it."""


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


async def keep_health(
    server: RpcServer, probes: Sequence[Probe], interval: float, lifespan: Lifespan
) -> None:
    """NOT_SERVING until every dependency answers, SERVING while they keep answering.

    ``lifespan`` is entered once, after the first time all answer, and left when
    this is cancelled (at shutdown). Pings repeat every ``interval`` seconds.
    """
    await _until_reachable(probes)
    async with lifespan():
        while True:
            await server.set_serving(True)
            log.info("serving")
            await _until_unreachable(probes, interval)
            await server.set_serving(False)
            await _until_reachable(probes)


async def _until_reachable(probes: Sequence[Probe]) -> None:
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


async def _until_unreachable(probes: Sequence[Probe], interval: float) -> None:
    """Ping all every ``interval`` seconds; return (after a warning) once one does not answer."""
    while True:
        await asyncio.sleep(interval)
        results = await asyncio.gather(*(p.ping() for p in probes), return_exceptions=True)
        failed = [(p, r) for p, r in zip(probes, results, strict=True) if isinstance(r, Exception)]
        for probe, error in failed:
            log.warning(str(error) or repr(error), component=probe.component)
        if failed:
            return
