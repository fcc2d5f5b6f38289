"""Integration tests talk to the tests' own stack (:mod:`tests.stack_session`).

Every test here gets it started first; the ``pool`` fixture opens a pool on its
Postgres, the ``online`` fixture a connection to its Redis (the online store),
``online_reads`` the multiplexed connection reads of online features go over.
A module testing the scheduler against a played cluster takes ``address`` (a
``python -m strata.scheduler`` of its own, started once per module with
``scheduler_tokens`` and ``scheduler_settings``, which a module overrides to log
in other principals or set ``STRATA_SCHEDULER_*``),
``client`` (a stub on it) and ``cluster`` (:func:`scheduler_peer.playing_cluster`);
a module that defines fixtures of those names uses its own.
Helpers of these tests (link.py, service_processes.py, strata_cli.py, the example
service's package) import by name: this folder is put on ``sys.path``, which
pytest's importlib mode does not do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from redis.asyncio import Redis

from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core import redis
from strata.core.postgres import create_pool
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.core.settings import RedisSettings, load
from tests.stack_session import STRATA, LocalStack

__all__ = ["STRATA", "LocalStack"]

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

if TYPE_CHECKING:
    from scheduler_peer import Cluster


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


@pytest.fixture
async def online_reads() -> AsyncIterator[MultiplexedConnection]:
    """The connection online features are read over, as services read them, closed after
    the test."""
    connection = MultiplexedConnection(load(RedisSettings))
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture(scope="module")
def scheduler_tokens() -> Mapping[str, Mapping[str, object]]:
    """The bearer tokens the module's scheduler takes (``STRATA_AUTH_TOKENS``)."""
    from scheduler_peer import TOKENS

    return TOKENS


@pytest.fixture(scope="module")
def scheduler_settings() -> Mapping[str, str]:
    """Environment the module's scheduler starts with, beside its tokens."""
    return {}


@pytest.fixture(scope="module")
async def address(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    scheduler_tokens: Mapping[str, Mapping[str, object]],
    scheduler_settings: Mapping[str, str],
) -> AsyncIterator[str]:
    """Where the module's own scheduler answers."""
    from service_processes import running

    folder = tmp_path_factory.mktemp(_module_name(request))
    tokens = json.dumps(scheduler_tokens)
    async with running(
        "scheduler", folder, STRATA_AUTH_TOKENS=tokens, **scheduler_settings
    ) as service:
        yield service.address


@pytest.fixture
async def client(address: str) -> AsyncIterator[SchedulerServiceStub]:
    from scheduler_peer import scheduler_client

    async with scheduler_client(address) as stub:
        yield stub


@pytest.fixture
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    from scheduler_peer import playing_cluster

    async with playing_cluster(_module_name(request)) as played:
        yield played


def _module_name(request: pytest.FixtureRequest) -> str:
    """The test module's name without its ``test_`` prefix, dashed: "scheduler-bursts"."""
    module: str = request.module.__name__
    return module.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
