"""Migration files: what a service author gets wrong is refused before any SQL runs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from strata.core.migrations import (
    CORE_PACKAGE,
    Applied,
    MigrationError,
    check_applied,
    load,
    parse,
    quote_schema,
    unknown_versions,
)

SOURCE = "svc.migrations"


def files(*names: str) -> dict[str, bytes]:
    return {name: f"-- {name}\nSELECT 1;\n".encode() for name in names}


def test_files_are_ordered_by_version_and_other_files_ignored() -> None:
    migrations = parse(files("0002_runs.sql", "0001_init.sql", "__init__.py", "README"), SOURCE)

    assert [m.label for m in migrations] == ["0001_init", "0002_runs"]
    assert [m.version for m in migrations] == [1, 2]


def test_checksum_is_the_content_not_the_name() -> None:
    first = parse({"0001_a.sql": b"SELECT 1;"}, SOURCE)[0]
    renamed = parse({"0001_b.sql": b"SELECT 1;"}, SOURCE)[0]
    edited = parse({"0001_a.sql": b"SELECT 2;"}, SOURCE)[0]

    assert first.checksum == renamed.checksum
    assert first.checksum != edited.checksum


@pytest.mark.parametrize(
    "bad", ["1_init.sql", "0001-init.sql", "0001_Init.sql", "0001_.sql", "00001_init.sql"]
)
def test_a_malformed_file_name_is_refused_naming_the_file(bad: str) -> None:
    with pytest.raises(MigrationError, match=f"{SOURCE}/{bad}: malformed migration file name"):
        parse(files("0001_init.sql", bad), SOURCE)


def test_a_gap_is_refused_naming_the_file_after_it() -> None:
    with pytest.raises(MigrationError, match=r"0003_c\.sql: version 0003 leaves a gap"):
        parse(files("0001_a.sql", "0003_c.sql"), SOURCE)


def test_a_first_version_other_than_one_is_a_gap() -> None:
    with pytest.raises(MigrationError, match=r"0002_b\.sql: version 0002 leaves a gap"):
        parse(files("0002_b.sql"), SOURCE)


def test_a_repeated_version_is_refused_naming_the_file() -> None:
    with pytest.raises(MigrationError, match=r"0001_b\.sql: version 0001 repeats"):
        parse(files("0001_a.sql", "0001_b.sql"), SOURCE)


def test_an_applied_file_that_changed_is_refused_naming_the_file() -> None:
    migration = parse({"0001_init.sql": b"CREATE TABLE t (a int);"}, SOURCE)[0]
    applied = Applied(1, "0001_init", "0" * 64)

    with pytest.raises(MigrationError, match=r"svc\.migrations/0001_init\.sql: changed after"):
        check_applied(migration, applied, SOURCE)


def test_an_applied_file_that_was_renamed_is_refused_naming_both() -> None:
    migration = parse({"0001_start.sql": b"SELECT 1;"}, SOURCE)[0]
    applied = Applied(1, "0001_init", migration.checksum)

    with pytest.raises(MigrationError, match=r"0001_start\.sql: .*applied as '0001_init'"):
        check_applied(migration, applied, SOURCE)


def test_an_unchanged_applied_file_passes() -> None:
    migration = parse({"0001_init.sql": b"SELECT 1;"}, SOURCE)[0]

    check_applied(migration, Applied(1, "0001_init", migration.checksum), SOURCE)


def test_versions_only_the_database_knows_are_reported() -> None:
    migrations = parse(files("0001_a.sql"), SOURCE)
    applied = [Applied(1, "0001_a", "x"), Applied(2, "0002_b", "y")]

    assert unknown_versions(migrations, applied) == [2]


def test_files_are_loaded_from_an_importable_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"pkg_{uuid.uuid4().hex}"
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "0001_init.sql").write_text("CREATE TABLE t (a int);")
    (folder / "0002_more.sql").write_text("ALTER TABLE t ADD b int;")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert [m.label for m in load(package)] == ["0001_init", "0002_more"]


def test_a_missing_package_is_named() -> None:
    with pytest.raises(MigrationError, match=r"'no_such_pkg\.migrations' cannot be imported"):
        load("no_such_pkg.migrations")


def test_the_scheduler_migrations_are_well_formed() -> None:
    migrations = load("strata.scheduler.migrations")

    assert migrations[0].label == "0001_init"


def test_the_core_migrations_are_well_formed_and_own_the_outbox_and_inbox() -> None:
    migrations = load(CORE_PACKAGE)

    assert migrations[0].label == "0001_outbox_inbox"
    assert "CREATE TABLE outbox " in migrations[0].sql
    assert "CREATE TABLE inbox " in migrations[0].sql
    assert "CREATE TABLE outbox" not in load("strata.scheduler.migrations")[0].sql


@pytest.mark.parametrize("bad", ["", "Scheduler", "1abc", "a-b", 'x"; DROP', "a" * 64])
def test_a_bad_schema_name_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=f"schema {bad!r} is not a valid schema name"):
        quote_schema(bad)
