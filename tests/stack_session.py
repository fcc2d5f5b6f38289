"""The tests' own stack, up once per session for every test that talks to servers.

Its home and ports are set by ``tests/conftest.py``. ``strata stack up`` is a no-op
when that stack already runs, and the session leaves it running: a start costs a
Kafka JVM start (15-30 s here), which a developer re-running one test file should
pay once, not on every run, and its data is throw-away (tests use unique names).
``make test-stack-down`` (also part of ``make stack-down``, and of CI's cleanup)
stops it, with the settings this session records in ``<home>/env``.

``tests/conftest.py`` registers :func:`local_stack` once for the whole session;
the integration and end-to-end folders each make it autouse for their tests.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from strata.core.settings import (
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    StackSettings,
    load,
)

STRATA = Path(sys.executable).with_name("strata")
"""The ``strata`` CLI of the venv that runs the tests (``make`` runs the same script)."""


@dataclass(frozen=True)
class LocalStack:
    """Settings of the servers the tests' stack runs, as services would load them."""

    kafka: KafkaSettings
    postgres: PostgresSettings
    redis: RedisSettings
    blobs: BlobSettings
    """The stack's S3 server (``backend='s3'``), whatever ``STRATA_BLOB_BACKEND`` says."""


@pytest.fixture(scope="session")
def local_stack() -> LocalStack:
    """Start the tests' stack unless it runs, and fail with its report if it cannot."""
    record_settings(load(StackSettings).home)
    started = subprocess.run([STRATA, "stack", "up"], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        pytest.fail(f"the tests' stack is not up:\n{started.stdout}{started.stderr}", pytrace=False)
    asyncio.run(_forget_service_state(load(PostgresSettings)))
    return LocalStack(
        kafka=load(KafkaSettings),
        postgres=load(PostgresSettings),
        redis=load(RedisSettings),
        blobs=load(BlobSettings).model_copy(update={"backend": "s3"}),
    )


SERVICE_SCHEMAS = ("scheduler", "provisioner", "agent", "streamer", "registry", "gateway")


async def _forget_service_state(settings: PostgresSettings) -> None:
    """Start each session with the services' own schemas empty, as on a fresh stack.

    The tests' stack outlives a session (it is kept for fast re-runs) and its data
    is throw-away; without this, what earlier sessions applied (feature views on
    deleted topics, workflows, queued attempts) piles up and a service started by a
    later test carries all of it, unlike in CI. Test schemas of their own are
    unaffected: they are made and dropped per test.
    """
    connection = await asyncpg.connect(settings.dsn)
    try:
        for schema in SERVICE_SCHEMAS:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def record_settings(home: Path) -> None:
    """Write the session's STRATA_* variables where ``make test-stack-down`` reads them.

    A file for the shell to source (``set -a; . <home>/env``), so ``down`` acts on the
    stack the tests started, whatever ports they were moved to. It may hold a password.
    """
    home.mkdir(parents=True, exist_ok=True)
    record = home / "env"
    lines = [
        f"{name}={shlex.quote(value)}"
        for name, value in sorted(os.environ.items())
        if name.startswith("STRATA_")
    ]
    record.touch(mode=0o600)
    record.write_text("\n".join(lines) + "\n")
