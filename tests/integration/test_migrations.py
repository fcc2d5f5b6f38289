"""Migrations against the real Postgres: concurrent starts, re-runs, edited history."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from strata.core.migrations import LOCK_CLASS, MigrationError, migrate, migrate_service

pytestmark = pytest.mark.integration

PEER = Path(__file__).with_name("migrations_peer.py")

GATE_CLASS = 0x5445_5354
"""Advisory lock class of the gate the first file waits at; the test holds it closed."""

FILES = {
    # The first file waits at a gate the test controls, so two starting processes
    # are certain to overlap: one inside the file, the other at the migration lock.
    "0001_init.sql": f"SELECT pg_advisory_xact_lock({GATE_CLASS}, hashtext(current_schema()));"
    " CREATE TABLE items (id int PRIMARY KEY);",
    "0002_more.sql": "ALTER TABLE items ADD COLUMN label text;",
    "0003_seed.sql": "INSERT INTO items (id, label) VALUES (1, 'seeded once');",
}


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A migrations package of its own on sys.path: (import name, folder)."""
    name = f"migrations_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for file_name, sql in FILES.items():
        (folder / file_name).write_text(sql)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, folder


async def history(pool: asyncpg.Pool, schema: str) -> list[tuple[int, str]]:
    rows = await pool.fetch(f'SELECT version, name FROM "{schema}".schema_migrations ORDER BY 1')
    return [(r["version"], r["name"]) for r in rows]


async def start_peer(schema: str, package: str, path: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEER),
        schema,
        package,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ready\n"
    return process


async def finish_peer(process: asyncio.subprocess.Process) -> list[str]:
    out, _ = await process.communicate()
    assert process.returncode == 0
    applied: list[str] = json.loads(out.splitlines()[-1])  # earlier lines are logs
    return applied


async def lock_waits(
    pool: asyncpg.Pool, schema: str, peers: list[asyncio.subprocess.Process]
) -> list[int]:
    """Wait until every peer waits for an advisory lock on ``schema`` (or one exited).

    Returns the lock classes waited for, sorted.
    """
    query = (
        "SELECT classid::bigint FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND objid::int = hashtext($1)"
    )
    while True:
        classes = [row["classid"] for row in await pool.fetch(query, schema)]
        if len(classes) >= len(peers) or any(p.returncode is not None for p in peers):
            return sorted(classes)
        await asyncio.sleep(0.02)


async def test_two_processes_migrating_at_once_apply_each_file_exactly_once(
    pool: asyncpg.Pool, schema: str, package: tuple[str, Path]
) -> None:
    name, folder = package
    async with pool.acquire() as gate:
        await gate.execute("SELECT pg_advisory_lock($1, hashtext($2))", GATE_CLASS, schema)
        peers = [await start_peer(schema, name, folder.parent) for _ in range(2)]
        for peer in peers:  # release both at once
            assert peer.stdin is not None
            peer.stdin.write(b"go\n")
            await peer.stdin.drain()
        # One peer is inside 0001 at the gate; the other must wait for the migration
        # lock (without it, both would be inside 0001 at the gate).
        waiting = await lock_waits(pool, schema, peers)
        await gate.execute("SELECT pg_advisory_unlock($1, hashtext($2))", GATE_CLASS, schema)

    assert waiting == sorted([GATE_CLASS, LOCK_CLASS])
    applied = [await finish_peer(peer) for peer in peers]
    assert sorted(applied[0] + applied[1]) == ["0001_init", "0002_more", "0003_seed"]
    assert await history(pool, schema) == [(1, "0001_init"), (2, "0002_more"), (3, "0003_seed")]
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".items') == 1


async def test_running_again_applies_nothing(
    pool: asyncpg.Pool, schema: str, package: tuple[str, Path]
) -> None:
    name, _ = package
    assert await migrate(pool, schema, name) == ["0001_init", "0002_more", "0003_seed"]

    assert await migrate(pool, schema, name) == []
    assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".items') == 1


async def test_a_new_file_is_applied_alone(
    pool: asyncpg.Pool, schema: str, package: tuple[str, Path]
) -> None:
    name, folder = package
    await migrate(pool, schema, name)
    (folder / "0004_index.sql").write_text("CREATE INDEX items_label ON items (label);")

    assert await migrate(pool, schema, name) == ["0004_index"]


async def test_an_edited_applied_file_refuses_to_start_naming_the_file(
    pool: asyncpg.Pool, schema: str, package: tuple[str, Path]
) -> None:
    name, folder = package
    await migrate(pool, schema, name)
    (folder / "0002_more.sql").write_text("ALTER TABLE items ADD COLUMN label varchar(10);")
    (folder / "0004_index.sql").write_text("CREATE INDEX items_label ON items (label);")

    with pytest.raises(MigrationError, match=rf"{name}/0002_more\.sql: changed after it was"):
        await migrate(pool, schema, name)
    assert len(await history(pool, schema)) == 3  # 0004 was not applied either


async def test_a_failing_file_is_rolled_back_whole_and_named(
    pool: asyncpg.Pool, schema: str, package: tuple[str, Path]
) -> None:
    name, folder = package
    (folder / "0002_more.sql").write_text(
        "CREATE TABLE half_done (a int); ALTER TABLE no_such_table ADD b int;"
    )

    with pytest.raises(MigrationError, match=rf"{name}/0002_more\.sql: failed and was rolled"):
        await migrate(pool, schema, name)
    assert await history(pool, schema) == [(1, "0001_init")]
    assert await pool.fetchval("SELECT to_regclass($1)", f"{schema}.half_done") is None

    (folder / "0002_more.sql").write_text(FILES["0002_more.sql"])
    assert await migrate(pool, schema, name) == ["0002_more", "0003_seed"]


async def test_a_service_gets_the_core_tables_then_its_own_each_track_with_its_history(
    pool: asyncpg.Pool, schema: str
) -> None:
    async with pool.acquire() as conn:
        applied = await migrate_service(conn, schema, "strata.scheduler.migrations")
        again = await migrate_service(conn, schema, "strata.scheduler.migrations")

    assert applied[:2] == [
        "strata.core.schema/0001_outbox_inbox",
        "strata.scheduler.migrations/0001_init",
    ]
    assert again == []
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert {r["table_name"] for r in tables} >= {
        "core_migrations",
        "schema_migrations",
        "workflows",
        "outbox",
        "outbox_parked",
        "inbox",
    }
    core = await pool.fetch(f'SELECT version, name FROM "{schema}".core_migrations')
    assert [(r["version"], r["name"]) for r in core] == [(1, "0001_outbox_inbox")]
    assert (await history(pool, schema))[0] == (1, "0001_init")
