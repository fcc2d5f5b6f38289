"""Integration tests talk to the tests' own stack (:mod:`tests.stack_session`).

Every test here gets it started first; the ``pool`` fixture opens a pool on its
Postgres, the ``online`` fixture a connection to its Redis (the online store).
Helpers of these tests (link.py, service_processes.py, strata_cli.py, the example
service's package) import by name: this folder is put on ``sys.path``, which
pytest's importlib mode does not do.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from strata.core import redis
from strata.core.postgres import create_pool
from strata.core.settings import RedisSettings, load
from tests.stack_session import STRATA, LocalStack

__all__ = ["STRATA", "LocalStack"]

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session", autouse=True)
def _stack_is_up(local_stack: LocalStack) -> LocalStack:
    return local_stack


@pytest.fixture
async def pool(local_stack: LocalStack) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on the stack's Postgres, closed after the test."""
    pool = await create_pool(local_stack.postgres)
    yield pool
    await pool.close()


@pytest.fixture
async def online() -> AsyncIterator[Redis]:
    """A connection to the stack's Redis (the feature store's online store), closed after
    the test."""
    connection = redis.client(load(RedisSettings))
    try:
        yield connection
    finally:
        await connection.aclose()
