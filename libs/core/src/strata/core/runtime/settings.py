"""Every setting a service process reads, loaded once at start."""

from __future__ import annotations

from dataclasses import dataclass

from strata.core.settings import (
    AuthSettings,
    BlobSettings,
    BusSettings,
    KafkaSettings,
    ModeSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
    TelemetrySettings,
    TlsSettings,
    load,
)


@dataclass(frozen=True)
class RuntimeSettings:
    """The settings of one service process, one pydantic-settings class per area.

    All are loaded, used or not, so a wrong value anywhere refuses the start with
    one line naming the variable, before anything runs.
    """

    mode: ModeSettings
    service: ServiceSettings
    auth: AuthSettings
    telemetry: TelemetrySettings
    kafka: KafkaSettings
    bus: BusSettings
    postgres: PostgresSettings
    redis: RedisSettings
    blobs: BlobSettings
    tls: TlsSettings

    @classmethod
    def load(cls) -> RuntimeSettings:
        """Read the environment; raises ConfigError naming each wrong variable."""
        return cls(
            mode=load(ModeSettings),
            service=load(ServiceSettings),
            auth=load(AuthSettings),
            telemetry=load(TelemetrySettings),
            kafka=load(KafkaSettings),
            bus=load(BusSettings),
            postgres=load(PostgresSettings),
            redis=load(RedisSettings),
            blobs=load(BlobSettings),
            tls=load(TlsSettings),
        )
