"""Postgres access for services: one asyncpg pool per process, sized by settings.

Each service owns its schema in the shared database and reaches it only through
the pool made here, so a server that is down reads the same everywhere: one
line naming Postgres and its address.
"""

from __future__ import annotations

import asyncpg

from strata.core.reachability import probe
from strata.core.settings import PostgresSettings

_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)


async def ping(settings: PostgresSettings, timeout: float = 5.0) -> None:
    """Run ``SELECT 1`` on a fresh connection; raise UnreachableError when it fails."""

    async def select_one() -> None:
        connection = await asyncpg.connect(settings.dsn, timeout=timeout)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    await probe("Postgres", settings.address, select_one, timeout, _FAILURES)


async def create_pool(settings: PostgresSettings, timeout: float = 10.0) -> asyncpg.Pool:
    """Open a pool of ``pool_min``..``pool_max`` connections; close it with ``await pool.close()``.

    The first ``pool_min`` connections open here, so a server that is down or
    refuses the login raises UnreachableError now rather than on the first query.
    """
    if settings.pool_min > settings.pool_max:
        raise ValueError(
            f"STRATA_POSTGRES_POOL_MIN ({settings.pool_min}) exceeds "
            f"STRATA_POSTGRES_POOL_MAX ({settings.pool_max})"
        )
    pool: asyncpg.Pool | None = None

    async def open_pool() -> None:
        nonlocal pool
        pool = await asyncpg.create_pool(
            settings.dsn,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=timeout,
        )

    await probe("Postgres", settings.address, open_pool, timeout, _FAILURES)
    assert pool is not None  # probe returned, so open_pool ran to the end
    return pool
