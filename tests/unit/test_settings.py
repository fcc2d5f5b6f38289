"""Settings come from STRATA_* variables, default to the local stack, and refuse bad values.

What people rely on: a fresh checkout needs no configuration; a typo in a variable
stops the process with a message naming that variable; secrets never show up in
reprs, logs or error messages.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

import pytest
from pydantic_settings import BaseSettings

from strata.core.errors import ConfigError
from strata.core.settings import (
    AuthSettings,
    BlobSettings,
    KafkaSettings,
    ModeSettings,
    PostgresSettings,
    RedisSettings,
    TelemetrySettings,
    load,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any STRATA_* variable of the developer's shell from these tests."""
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)


def test_defaults_point_at_the_local_stack() -> None:
    assert load(KafkaSettings).bootstrap == "127.0.0.1:19092"
    postgres = load(PostgresSettings)
    assert postgres.address == "127.0.0.1:15432"
    assert postgres.dsn == "postgresql://strata:strata@127.0.0.1:15432/strata"
    assert load(RedisSettings).address == "127.0.0.1:16379"
    blobs = load(BlobSettings)
    assert blobs.endpoint_url == "http://127.0.0.1:19000"
    assert blobs.bucket == "strata"


def test_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_KAFKA_PORT", "29092")
    monkeypatch.setenv("STRATA_POSTGRES_HOST", "db.internal")
    monkeypatch.setenv("STRATA_BLOB_BACKEND", "s3")
    monkeypatch.setenv("STRATA_BLOB_S3_ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")

    assert load(KafkaSettings).bootstrap == "127.0.0.1:29092"
    assert load(PostgresSettings).address == "db.internal:15432"
    blobs = load(BlobSettings)
    assert blobs.backend == "s3"
    assert blobs.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_bootstrap_servers_list_wins_over_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    assert load(KafkaSettings).bootstrap == "k1:9092,k2:9092"


@pytest.mark.parametrize(
    ("cls", "variable", "value"),
    [
        (KafkaSettings, "STRATA_KAFKA_PORT", "abc"),
        (RedisSettings, "STRATA_REDIS_DB", "-1"),
        (RedisSettings, "STRATA_REDIS_READ_TIMEOUT", "0"),
        (BlobSettings, "STRATA_BLOB_BACKEND", "gcs"),
        (BlobSettings, "STRATA_BLOB_MULTIPART_CHUNK", "1024"),
        (TelemetrySettings, "STRATA_TELEMETRY_LOG_LEVEL", "LOUD"),
        (AuthSettings, "STRATA_AUTH_ENABLED", "maybe"),
        (ModeSettings, "STRATA_MODE", "staging"),
    ],
)
def test_a_wrong_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load(cls)
    assert variable in str(caught.value)
    assert repr(value) in str(caught.value)


def test_every_wrong_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_POSTGRES_PORT", "five")
    monkeypatch.setenv("STRATA_POSTGRES_POOL_MAX", "0")
    with pytest.raises(ConfigError) as caught:
        load(PostgresSettings)
    assert "STRATA_POSTGRES_PORT" in str(caught.value)
    assert "STRATA_POSTGRES_POOL_MAX" in str(caught.value)


def test_secrets_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_POSTGRES_PASSWORD", "pg-s3cret")
    monkeypatch.setenv("STRATA_REDIS_PASSWORD", "redis-s3cret")
    monkeypatch.setenv("STRATA_BLOB_S3_SECRET_KEY", "s3-s3cret")
    postgres, redis, blobs = load(PostgresSettings), load(RedisSettings), load(BlobSettings)

    shown = " ".join(repr(s) + str(s) for s in (postgres, redis, blobs))
    for secret in ("pg-s3cret", "redis-s3cret", "s3-s3cret"):
        assert secret not in shown
    assert postgres.password.get_secret_value() == "pg-s3cret"  # still usable


def test_a_malformed_token_map_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATA_AUTH_TOKENS", '{"tok-s3cret": "not an object"}')
    with pytest.raises(ConfigError) as caught:
        load(AuthSettings)
    assert "STRATA_AUTH_TOKENS" in str(caught.value)
    assert "tok-s3cret" not in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load(KafkaSettings)
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


def test_the_mode_is_production_unless_development_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(ModeSettings).mode == "production"
    monkeypatch.setenv("STRATA_MODE", "development")
    assert load(ModeSettings).mode == "development"


@pytest.mark.parametrize(
    ("mode", "reflection", "served"),
    [
        ("production", None, False),
        ("development", None, True),
        ("production", "true", True),
        ("development", "false", False),
    ],
)
def test_reflection_follows_the_mode_unless_set(
    monkeypatch: pytest.MonkeyPatch, mode: str, reflection: str | None, served: bool
) -> None:
    monkeypatch.setenv("STRATA_MODE", mode)
    if reflection is not None:
        monkeypatch.setenv("STRATA_REFLECTION", reflection)
    assert load(ModeSettings).serves_reflection is served


def test_the_postgres_dsn_escapes_user_password_and_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "p@ss/w#rd:100%?"
    monkeypatch.setenv("STRATA_POSTGRES_USER", "ml@team")
    monkeypatch.setenv("STRATA_POSTGRES_PASSWORD", password)
    monkeypatch.setenv("STRATA_POSTGRES_DATABASE", "features/v2")
    url = urlsplit(load(PostgresSettings).dsn)
    assert (url.hostname, url.port) == ("127.0.0.1", 15432)
    assert unquote(url.username or "") == "ml@team"
    assert unquote(url.password or "") == password
    assert unquote(url.path) == "/features/v2"
