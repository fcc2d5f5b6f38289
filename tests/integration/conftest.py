"""Integration tests talk to the shared local stack; this makes sure it is up first.

``strata stack up`` is a no-op when the stack already runs (``make test`` starts it
before pytest), so the session pays for a start only when nothing was running.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from strata.core.postgres import create_pool
from strata.core.settings import (
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    load,
)

STRATA = Path(sys.executable).with_name("strata")
"""The ``strata`` CLI of the venv that runs the tests (``make`` runs the same script)."""


@dataclass(frozen=True)
class LocalStack:
    """Settings of the servers the shared local stack runs, as services would load them."""

    kafka: KafkaSettings
    postgres: PostgresSettings
    redis: RedisSettings
    blobs: BlobSettings
    """The stack's S3 server (``backend='s3'``), whatever ``STRATA_BLOB_BACKEND`` says."""


@pytest.fixture(scope="session", autouse=True)
def local_stack() -> LocalStack:
    """Start the shared local stack unless it runs, and fail with its report if it cannot."""
    started = subprocess.run([STRATA, "stack", "up"], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        pytest.fail(f"the local stack is not up:\n{started.stdout}{started.stderr}", pytrace=False)
    return LocalStack(
        kafka=load(KafkaSettings),
        postgres=load(PostgresSettings),
        redis=load(RedisSettings),
        blobs=load(BlobSettings).model_copy(update={"backend": "s3"}),
    )


@pytest.fixture
async def pool(local_stack: LocalStack) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on the stack's Postgres, closed after the test."""
    pool = await create_pool(local_stack.postgres)
    yield pool
    await pool.close()
