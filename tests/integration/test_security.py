"""Secure by default, as operators meet it: a real service process and the real Postgres.

A service started in production mode refuses the local stack's conveniences (the
public token, disabled auth, no tokens at all) with one line naming the variable,
and starts once real tokens are set. A Postgres password full of URL syntax works.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from strata.core.settings import PostgresSettings, StackSettings, load
from strata.sdk.stack.postgres import Postgres

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on waiting for a process to get somewhere: a guard against hanging, not a timing check."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _production(port: int, **env: str) -> dict[str, str]:
    """The test environment in production mode, without any auth or mode variable of its own."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("STRATA_AUTH_", "STRATA_MODE"))
    }
    ports = {
        "STRATA_SERVICE_SCHEDULER_PORT": str(port),
        "STRATA_SERVICE_SCHEDULER_METRICS_PORT": "0",
    }
    return {**kept, "STRATA_MODE": "production", **ports, **env}


def _logged(log: Path) -> str:
    return log.read_text()


async def _scheduler(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.scheduler", env=env, stderr=sink
        )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "STRATA_AUTH_TOKENS is not set"),
        (
            {"STRATA_AUTH_TOKENS": json.dumps({"dev-admin-token": {"principal": "dev"}})},
            "STRATA_AUTH_TOKENS holds the public local-stack token",
        ),
        (
            {"STRATA_AUTH_ENABLED": "false", "STRATA_AUTH_TOKENS": "{}"},
            "STRATA_AUTH_ENABLED=false",
        ),
    ],
    ids=["no-tokens", "public-token", "auth-disabled"],
)
async def test_production_refuses_the_local_stack_defaults_naming_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    log = tmp_path / "scheduler.log"
    process = await _scheduler(_production(_free_port(), **env), log)
    async with asyncio.timeout(BOUND):
        code = await process.wait()
    error = _logged(log)
    assert code == 2, error
    assert error.startswith(f"strata.scheduler refuses to start: {variable}")
    assert len(error.strip().splitlines()) == 1


async def test_production_with_issued_tokens_starts(tmp_path: Path) -> None:
    """Past the start-up checks: the process listens, and says nothing of the public token."""
    tokens = json.dumps({"ops-token": {"principal": "ops", "roles": ["admin"]}})
    log = tmp_path / "scheduler.log"
    process = await _scheduler(_production(_free_port(), STRATA_AUTH_TOKENS=tokens), log)
    try:
        await _until_logged(process, log, "listening")
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            code = await process.wait()
    assert code == 0, _logged(log)
    assert "public local-stack token" not in _logged(log)


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
async def test_plain_text_beyond_loopback_is_warned_of(
    tmp_path: Path, host: str, warned: bool
) -> None:
    tokens = json.dumps({"ops-token": {"principal": "ops", "roles": ["admin"]}})
    env = _production(_free_port(), STRATA_AUTH_TOKENS=tokens, STRATA_SERVICE_HOST=host)
    log = tmp_path / "scheduler.log"
    process = await _scheduler(env, log)
    try:
        await _until_logged(process, log, "listening")
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            await process.wait()
    assert ("serving gRPC in plain text beyond loopback" in _logged(log)) is warned


async def _until_logged(process: asyncio.subprocess.Process, log: Path, event: str) -> None:
    async with asyncio.timeout(BOUND):
        while not any(
            json.loads(line)["event"] == event for line in _logged(log).splitlines() if line
        ):
            assert process.returncode is None, _logged(log)
            await asyncio.sleep(0.2)


PASSWORD = "p@ss/w#rd:100%?&="
"""Every character that means something in a URL."""


@pytest.fixture
async def odd_role() -> AsyncIterator[PostgresSettings]:
    """A login role whose name and password are full of URL syntax, dropped afterwards."""
    settings = load(PostgresSettings)
    role = f"ml@team/{uuid.uuid4().hex[:8]}"
    superuser = await Postgres(load(StackSettings).home, settings).connect_superuser()
    try:
        create = await superuser.fetchval(
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
            role,
            PASSWORD,
        )
        await superuser.execute(create)
        yield settings.model_copy(update={"user": role, "password": SecretStr(PASSWORD)})
    finally:
        drop = await superuser.fetchval("SELECT format('DROP ROLE IF EXISTS %I', $1::text)", role)
        await superuser.execute(drop)
        await superuser.close()


async def test_a_password_with_url_syntax_logs_in_through_the_dsn(
    odd_role: PostgresSettings,
) -> None:
    connection = await asyncpg.connect(odd_role.dsn, timeout=BOUND)
    try:
        assert await connection.fetchval("SELECT current_user") == odd_role.user
    finally:
        await connection.close()
