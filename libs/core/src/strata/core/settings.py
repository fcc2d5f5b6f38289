"""Typed settings for every Strata process, one class per area.

Every field reads a ``STRATA_<AREA>_<FIELD>`` environment variable and defaults to
the local stack on loopback (``make stack-up``), so a fresh checkout needs no
configuration. This module is the one place where ports are written down: the
local stack and the services both read them from here.

A value of the wrong type refuses to start the process with a message that names
the variable (:func:`load`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from strata.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[5]
"""The checkout this package runs from (editable install in the uv workspace)."""


def _area(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class KafkaSettings(BaseSettings):
    """The Kafka cluster every event goes through."""

    model_config = _area("STRATA_KAFKA_")

    host: str = Field("127.0.0.1", description="Address the broker listens on.")
    port: int = Field(19092, description="Client (PLAINTEXT) port of the broker.")
    controller_port: int = Field(19093, description="KRaft controller port (local stack only).")
    bootstrap_servers: str | None = Field(
        None, description="Comma-separated host:port list; defaults to host:port."
    )
    heap: str = Field("512m", description="Java heap of the local broker (-Xmx and -Xms).")

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"


class BusSettings(BaseSettings):
    """How services publish and consume events (``strata.core.bus``)."""

    model_config = _area("STRATA_BUS_")

    producer: str | None = Field(
        None, description="Name in each envelope's producer field; defaults to <service>/<host>."
    )
    linger_ms: int = Field(0, ge=0, description="Producer wait to batch records; 0 = send now.")
    retry_attempts: int = Field(
        5, ge=1, description="Handler runs per record on an error (not an outage) before the DLQ."
    )
    retry_backoff_initial: float = Field(
        0.1, gt=0, description="Seconds before the first retry; doubles each time."
    )
    retry_backoff_max: float = Field(
        5.0, gt=0, description="Longest wait between retries, and of a paused partition, s."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts reading."
    )
    fetch_max_wait_ms: int = Field(
        100, ge=0, description="Longest broker-side wait of an empty fetch (1 byte minimum)."
    )
    max_batch: int = Field(500, ge=1, description="Most events one batch handler call gets.")
    commit_every: int = Field(
        1000, ge=1, description="Settled records after which their offsets are committed."
    )
    commit_interval_ms: int = Field(
        500, ge=1, description="Longest wait of a settled record for its offset commit, ms."
    )


class PostgresSettings(BaseSettings):
    """The Postgres server holding each service's own schema."""

    model_config = _area("STRATA_POSTGRES_")

    host: str = Field("127.0.0.1", description="Address of the Postgres server.")
    port: int = Field(15432, description="Port of the Postgres server.")
    user: str = Field("strata", description="Role the services log in as.")
    password: SecretStr = Field(SecretStr("strata"), description="Password of that role.")
    database: str = Field("strata", description="Database holding every service schema.")
    pool_min: int = Field(1, ge=0, description="Connections a pool keeps open.")
    pool_max: int = Field(10, ge=1, description="Connections a pool opens at most.")

    @property
    def dsn(self) -> str:
        """The connection URL; user, password and database are percent-encoded.

        Unescaped, a password with ``@``, ``/``, ``#`` or ``:`` would be read as part
        of the host or path, and the service would log in to the wrong place or not at all.
        """
        user, secret, database = (
            quote(part, safe="")
            for part in (self.user, self.password.get_secret_value(), self.database)
        )
        return f"postgresql://{user}:{secret}@{self.host}:{self.port}/{database}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class RedisSettings(BaseSettings):
    """The Redis server that holds online features."""

    model_config = _area("STRATA_REDIS_")

    host: str = Field("127.0.0.1", description="Address of the Redis server.")
    port: int = Field(16379, description="Port of the Redis server.")
    db: int = Field(0, ge=0, description="Redis logical database number.")
    password: SecretStr | None = Field(None, description="Password (AUTH), if the server has one.")
    read_timeout: float = Field(
        2.0,
        gt=0,
        description="Seconds a read on a request's path (online features for Predict and "
        "GetOnlineFeatures) waits for Redis; past it the request fails UNAVAILABLE and the "
        "connection is opened again.",
    )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class BlobSettings(BaseSettings):
    """Where artifacts and offline data are stored: S3 or the local filesystem."""

    model_config = _area("STRATA_BLOB_")

    backend: Literal["local", "s3"] = Field(
        "local", description="'local' (a folder, no server) or 's3' (any S3-compatible server)."
    )
    root: Path = Field(REPO_ROOT / ".stack" / "blobs", description="Folder of the 'local' backend.")
    bucket: str = Field("strata", description="Bucket of the 's3' backend.")
    s3_host: str = Field("127.0.0.1", description="Address of the S3-compatible server.")
    s3_port: int = Field(19000, description="Port of the S3-compatible server.")
    s3_endpoint_url: str | None = Field(
        None, description="Full endpoint URL; defaults to http://s3_host:s3_port. Unset on AWS."
    )
    s3_region: str = Field("us-east-1", description="Region sent to the S3 server.")
    s3_access_key: SecretStr = Field(SecretStr("strata"), description="S3 access key id.")
    s3_secret_key: SecretStr = Field(SecretStr("strata-secret"), description="S3 secret key.")
    multipart_threshold: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Objects above this size go multipart."
    )
    multipart_chunk: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Size of one multipart part, bytes."
    )
    multipart_concurrency: int = Field(
        4, ge=1, description="Multipart parts uploaded at once (memory: about 2x this many parts)."
    )

    @property
    def endpoint_url(self) -> str:
        return self.s3_endpoint_url or f"http://{self.s3_host}:{self.s3_port}"


class StackSettings(BaseSettings):
    """The local stack of real servers started by ``make stack-up``."""

    model_config = _area("STRATA_STACK_")

    home: Path = Field(
        REPO_ROOT / ".stack", description="Folder with every server's data, logs and pid files."
    )
    start_timeout: float = Field(90.0, gt=0, description="Seconds stack-up waits per server.")


class TelemetrySettings(BaseSettings):
    """Logs and traces."""

    model_config = _area("STRATA_TELEMETRY_")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level of log lines written."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="'json' (one object a line) or 'console' (for people)."
    )
    traces: Literal["off", "console", "otlp"] = Field(
        "off", description="Where spans go: nowhere, stderr, or an OTLP collector."
    )
    otlp_endpoint: str = Field(
        "http://127.0.0.1:4317", description="OTLP/gRPC collector, when traces='otlp'."
    )


Mode = Literal["production", "development"]
"""How much a process may take for granted: ``development`` trusts the machine it runs on."""


class ModeSettings(BaseSettings):
    """Production (the default) or development (the local stack, ``strata dev``, the tests).

    Production refuses what is only safe on a developer's machine: the public
    local-stack token, disabled auth, and gRPC reflection unless asked for.
    """

    model_config = _area("STRATA_")

    mode: Mode = Field(
        "production", description="'production' (the default) or 'development' (local only)."
    )
    reflection: bool | None = Field(
        None, description="Serve gRPC reflection; unset: on in development, off in production."
    )

    @property
    def serves_reflection(self) -> bool:
        """Reflection lists every method to anyone, so production serves it only when asked."""
        return self.mode == "development" if self.reflection is None else self.reflection


class TlsSettings(BaseSettings):
    """TLS for gRPC, from PEM files; all unset (the local stack) means plain text.

    A server serves TLS when ``cert_file`` and ``key_file`` are set, and requires
    client certificates signed by ``client_ca_file`` when that is set too (mTLS).
    A client speaks TLS when ``ca_file`` is set, and presents ``client_cert_file``.
    """

    model_config = _area("STRATA_TLS_")

    cert_file: Path | None = Field(None, description="Certificate chain this server presents.")
    key_file: Path | None = Field(None, description="Private key of that certificate.")
    client_ca_file: Path | None = Field(
        None, description="CA bundle client certificates must chain to; set to require mTLS."
    )
    ca_file: Path | None = Field(
        None, description="CA bundle this process verifies servers with; set to call over TLS."
    )
    client_cert_file: Path | None = Field(
        None, description="Certificate this process presents as a client (mTLS)."
    )
    client_key_file: Path | None = Field(None, description="Private key of the client certificate.")


DEV_ADMIN_TOKEN = "dev-admin-token"
"""The local stack's admin token: public, so only a development-mode process accepts it."""


def _dev_admin() -> dict[str, str | list[str]]:
    return {"principal": "dev", "roles": ["admin"]}


class AuthSettings(BaseSettings):
    """Bearer tokens accepted by the gRPC servers, mapped to a principal and roles.

    ``STRATA_AUTH_TOKENS`` is JSON: ``{"<token>": {"principal": "ci", "roles": ["admin"]}}``.
    The defaults are the public local-stack token, which only development mode accepts
    (:func:`strata.core.rpc.auth.check_auth_settings`, :func:`strata.core.rpc.channel`).
    """

    model_config = _area("STRATA_AUTH_")

    enabled: bool = Field(
        True, description="Require a bearer token on every gRPC call; false in development only."
    )
    tokens: dict[str, dict[str, str | list[str]]] = Field(
        default_factory=lambda: {DEV_ADMIN_TOKEN: _dev_admin()},
        description="Token -> {principal, roles}. The default suits development only.",
    )
    client_token: SecretStr = Field(
        SecretStr(DEV_ADMIN_TOKEN),
        description="Token this process sends as a gRPC client; the default: development only.",
    )


class ServiceSettings(BaseSettings):
    """Where each service listens. Ports are fixed per service so clients find them."""

    model_config = _area("STRATA_SERVICE_")

    host: str = Field("127.0.0.1", description="Address every service's gRPC server binds.")
    scheduler_port: int = Field(50051, description="gRPC port of the scheduler.")
    provisioner_port: int = Field(50052, description="gRPC port of the provisioner.")
    agent_port: int = Field(50053, description="gRPC port of a node agent (health only).")
    streamer_port: int = Field(50054, description="gRPC port of the feature streamer.")
    registry_port: int = Field(50055, description="gRPC port of the model registry.")
    gateway_port: int = Field(50056, description="gRPC port of the deploy gateway.")
    scheduler_metrics_port: int = Field(9461, description="Prometheus /metrics of the scheduler.")
    provisioner_metrics_port: int = Field(9462, description="/metrics of the provisioner.")
    agent_metrics_port: int = Field(9463, description="/metrics of a node agent.")
    streamer_metrics_port: int = Field(9464, description="/metrics of the feature streamer.")
    registry_metrics_port: int = Field(9465, description="/metrics of the model registry.")
    gateway_metrics_port: int = Field(9466, description="/metrics of the deploy gateway.")
    inbox_retention_days: float = Field(
        14.0, gt=0, description="Days an event id is kept for de-duplication (2x topic retention)."
    )
    shutdown_grace: float = Field(
        3.0, ge=0, description="Seconds to stop in on SIGTERM: calls, consumers, tasks."
    )
    ping_timeout: float = Field(
        5.0, gt=0, description="Seconds one health ping of a dependency may take."
    )
    health_interval: float = Field(
        10.0, gt=0, description="Seconds between dependency pings once a service is SERVING."
    )

    def port_of(self, service: str) -> int:
        port = getattr(self, f"{service}_port", None)
        if not isinstance(port, int):
            raise ConfigError(f"no gRPC port is configured for service {service!r}")
        return port

    def metrics_port_of(self, service: str) -> int:
        port = getattr(self, f"{service}_metrics_port", None)
        if not isinstance(port, int):
            raise ConfigError(f"no metrics port is configured for service {service!r}")
        return port


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """Build ``cls`` from the environment; a bad value raises :class:`ConfigError`.

    The error names each offending variable and what was expected, e.g.
    ``STRATA_KAFKA_PORT='abc': Input should be a valid integer``.
    """
    prefix = str(cls.model_config.get("env_prefix", ""))
    try:
        return cls()
    except ValidationError as exc:
        problems = [_problem(prefix, err["loc"], err["input"], err["msg"]) for err in exc.errors()]
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    except SettingsError as exc:  # a JSON-valued variable that does not parse
        field = re.search(r'field "(\w+)"', str(exc))
        name = prefix + (field.group(1).upper() if field else "*")
        raise ConfigError(f"invalid settings: {name}: not valid JSON") from None


def _problem(prefix: str, loc: tuple[int | str, ...], value: object, msg: str) -> str:
    """One problem, named by its variable; inner keys and values are left out.

    Inside a JSON-valued variable the keys can be secrets (``STRATA_AUTH_TOKENS`` is
    keyed by token), so only the variable and the scalar value of a plain one show.
    """
    variable = f"{prefix}{str(loc[0]).upper()}" if loc else prefix.rstrip("_")
    if len(loc) == 1 and isinstance(value, str | int | float | bool):
        return f"{variable}={value!r}: {msg}"
    return f"{variable}: {msg}"
