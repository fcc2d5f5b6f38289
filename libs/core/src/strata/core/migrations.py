"""Versioned SQL migrations, one Postgres schema per service, applied at service start.

A service keeps its migrations as ``NNNN_name.sql`` files in a ``migrations``
package (found through :mod:`importlib.resources`, so they ship inside the wheel)
and the runtime calls :func:`migrate_service` before it serves anything::

    await migrate_service(pool, "scheduler", "strata.scheduler.migrations")

Two tracks go into every service schema, each with its own numbering and history
table: first the core's (:mod:`strata.core.schema`: the outbox and the inbox, in
``core_migrations``), then the service's own (in ``schema_migrations``). A core
release that changes the outbox adds a core file; no service copies its tables.

Each file runs in its own transaction with ``search_path`` set to the schema, so
the SQL names its tables without a schema (``CREATE TABLE workflows ...``) and the
same files can be applied to a throw-away schema in tests. What was applied is
recorded in the track's history table, ``<schema>.schema_migrations(version,
name, checksum, applied_at)`` for the service's own files.

Safe to run twice, and from many replicas at once: every transaction first takes
``pg_advisory_xact_lock`` keyed on the schema (one lock for both tracks), so
replicas starting together serialize, and each one re-reads the history under the
lock before applying a file (the loser of the race finds the file applied and
skips it).

Refuses to start, with an error naming the file, when an applied file's checksum
changed (edit history by adding a file, never by editing one), when a file name is
malformed, or when versions have a gap or repeat. A database that has versions the
code does not know (an older replica during a rolling deploy) is accepted: those
versions are returned by :func:`unknown_versions` and logged.

Why not a library: the asyncpg-native ones (asyncpg-trek, pogo-migrate) keep their
history in one unqualified table of the connection's default schema, take no lock
against concurrent runs, and checksum the file name rather than its content;
yoyo-migrations is synchronous (psycopg) and Alembic brings SQLAlchemy (its asyncpg
support runs migrations through ``run_sync``): either adds a second database layer
to every service. What we need fits in this one small module.

Statements that cannot run inside a transaction (``CREATE INDEX CONCURRENTLY``)
are not supported; plain ``CREATE INDEX`` is fine on the small tables of a
service schema.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from strata.core.errors import StrataError

log = structlog.stdlib.get_logger(__name__)

DbConnection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one borrowed from a pool: both work everywhere here."""

FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LOCK_CLASS = 0x5354_4D31
"""First key of the two-key advisory lock; the second is ``hashtext(schema)``."""

CORE_PACKAGE = "strata.core.schema"
"""The core's track: the tables every service has (outbox, inbox)."""
CORE_HISTORY = "core_migrations"
SERVICE_HISTORY = "schema_migrations"

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.{history} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(StrataError):
    """The migration files or the recorded history are inconsistent; the service must not start."""


@dataclass(frozen=True)
class Migration:
    """One ``NNNN_name.sql`` file."""

    version: int
    file_name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return self.file_name.removesuffix(".sql")


@dataclass(frozen=True)
class Applied:
    """One row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str


def quote_schema(schema: str) -> str:
    """Return ``schema`` quoted for SQL, after checking it is a plain lower-case identifier.

    Schema names are interpolated into SQL (identifiers cannot be bind
    parameters), so anything but ``[a-z_][a-z0-9_]*`` is refused.
    """
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema {schema!r} is not a valid schema name: "
            "use 1-63 characters of a-z, 0-9 and _, not starting with a digit"
        )
    return f'"{schema}"'


def parse(files: Mapping[str, bytes], source: str) -> list[Migration]:
    """Turn ``{file name: content}`` into migrations in version order, or say which file is wrong.

    Only ``.sql`` files count; ``source`` names the package in error messages.
    """
    migrations: list[Migration] = []
    for file_name in sorted(f for f in files if f.endswith(".sql")):
        match = FILE_NAME.fullmatch(file_name)
        if match is None:
            raise MigrationError(
                f"{source}/{file_name}: malformed migration file name; "
                "expected NNNN_name.sql (four digits, then lower-case letters, digits, _)"
            )
        content = files[file_name]
        migrations.append(
            Migration(
                version=int(match["version"]),
                file_name=file_name,
                sql=content.decode("utf-8"),
                checksum=hashlib.sha256(content).hexdigest(),
            )
        )
    _check_sequence(migrations, source)
    return migrations


def _check_sequence(migrations: list[Migration], source: str) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            problem = "repeats" if migration.version < expected else "leaves a gap before"
            raise MigrationError(
                f"{source}/{migration.file_name}: version {migration.version:04d} {problem} "
                f"version {expected:04d}; versions must run 0001, 0002, ... without gaps"
            )


def load(package: str) -> list[Migration]:
    """Read and parse the ``.sql`` files of the importable package ``package``."""
    try:
        folder = resources.files(package)
    except ModuleNotFoundError:
        raise MigrationError(f"migrations package {package!r} cannot be imported") from None
    files = {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".sql")
    }
    return parse(files, package)


def check_applied(migration: Migration, applied: Applied, source: str) -> None:
    """Refuse a file whose content or name differs from what was applied under its version."""
    if applied.checksum != migration.checksum:
        raise MigrationError(
            f"{source}/{migration.file_name}: changed after it was applied "
            f"(checksum {migration.checksum[:12]}, applied {applied.checksum[:12]}); "
            "restore the file and put the change in a new migration"
        )
    if applied.name != migration.label:
        raise MigrationError(
            f"{source}/{migration.file_name}: version {migration.version:04d} was applied "
            f"as {applied.name!r}; restore the file name"
        )


def unknown_versions(migrations: Iterable[Migration], applied: Iterable[Applied]) -> list[int]:
    """Versions recorded in the database that no file provides (a newer deploy applied them)."""
    known = {m.version for m in migrations}
    return sorted(a.version for a in applied if a.version not in known)


async def migrate_service(db: asyncpg.Pool | DbConnection, schema: str, package: str) -> list[str]:
    """Apply the core's track, then the service's ``package``, to ``schema``.

    Returns what this call applied as ``package/label`` (``strata.core.schema/0001_outbox_inbox``).
    """
    core = await migrate(db, schema, CORE_PACKAGE, history=CORE_HISTORY)
    own = await migrate(db, schema, package)
    return [f"{CORE_PACKAGE}/{label}" for label in core] + [f"{package}/{label}" for label in own]


async def migrate(
    db: asyncpg.Pool | DbConnection,
    schema: str,
    package: str,
    *,
    history: str = SERVICE_HISTORY,
) -> list[str]:
    """Bring ``schema`` up to the files of ``package``; return the labels this call applied.

    ``db`` is a pool (one connection is borrowed for the run) or a connection
    that is not inside a transaction. ``history`` names the track's history table.
    """
    quote_schema(schema)
    track = Track(package, quote_schema(history))
    migrations = load(package)
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _migrate(conn, schema, track, migrations)
    return await _migrate(db, schema, track, migrations)


@dataclass(frozen=True)
class Track:
    """A package of migration files and the (quoted) table that records them."""

    package: str
    history: str


async def _migrate(
    conn: DbConnection, schema: str, track: Track, migrations: list[Migration]
) -> list[str]:
    package = track.package
    async with conn.transaction():
        applied = await _history(conn, schema, track.history, create=True)
    for version in unknown_versions(migrations, applied.values()):
        log.warning(
            "unknown migration in database", schema=schema, version=version, package=package
        )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            check_applied(migration, applied[migration.version], package)
            continue
        if await _apply(conn, schema, track, migration):
            done.append(migration.label)
    return done


async def _history(
    conn: DbConnection, schema: str, history: str, *, create: bool
) -> dict[int, Applied]:
    """Lock the schema for this transaction and read what was applied (creating the table)."""
    quoted = quote_schema(schema)
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, schema)
    if create:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(HISTORY_DDL.format(schema=quoted, history=history))
    rows = await conn.fetch(f"SELECT version, name, checksum FROM {quoted}.{history}")
    return {r["version"]: Applied(r["version"], r["name"], r["checksum"]) for r in rows}


async def _apply(conn: DbConnection, schema: str, track: Track, migration: Migration) -> bool:
    """Apply one file in its own transaction unless another process just did; True if applied."""
    quoted, package = quote_schema(schema), track.package
    async with conn.transaction():
        applied = await _history(conn, schema, track.history, create=False)
        if migration.version in applied:
            check_applied(migration, applied[migration.version], package)
            return False
        await conn.execute(f"SET LOCAL search_path TO {quoted}")
        try:
            await conn.execute(migration.sql)
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"{package}/{migration.file_name}: failed and was rolled back: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        await conn.execute(
            f"INSERT INTO {quoted}.{track.history} (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.label,
            migration.checksum,
        )
    log.info("migration applied", schema=schema, package=package, migration=migration.label)
    return True
