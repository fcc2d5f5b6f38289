"""Redis clients for the online feature store.

Raw bytes in and out (``decode_responses=False``): feature values are encoded by
the feature store, not by the client.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from strata.core.reachability import probe
from strata.core.settings import RedisSettings


def client(settings: RedisSettings, **overrides: Any) -> redis.asyncio.Redis:
    """A pooled client for the configured server; close it with ``await client.aclose()``.

    ``overrides`` go to ``redis.asyncio.Redis`` as is (timeouts, retry policy).
    """
    password = settings.password.get_secret_value() if settings.password else None
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "db": settings.db,
        "password": password,
        "decode_responses": False,
        **overrides,
    }
    return redis.asyncio.Redis(**options)


async def ping(settings: RedisSettings, timeout: float = 5.0) -> None:
    """Send PING once, without retries; raise UnreachableError when no PONG comes back."""

    async def send_ping() -> None:
        connection = client(settings, retry=Retry(NoBackoff(), retries=0))
        try:
            await connection.ping()
        finally:
            await connection.aclose()

    await probe("Redis", settings.address, send_ping, timeout, (RedisError, OSError))
