"""What the gateway serves and where it finds the registry (``STRATA_GATEWAY_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """The gateway's own settings; the shared ones (ports, auth, Kafka) are the runtime's."""

    model_config = SettingsConfigDict(env_prefix="STRATA_GATEWAY_", extra="ignore", frozen=True)

    models: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Models and the aliases served of each, e.g. {"eta": ["champion"]}.',
    )
    registry: str = Field(
        "127.0.0.1:50055", description="host:port of the model registry, the models' only source."
    )
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol's REST API (/v2); 0 picks a free "
        "one, logged at start. gRPC keeps the service port.",
    )
    reconcile_interval: float = Field(
        30.0,
        gt=0,
        description="Seconds between re-reading each served alias from the registry, "
        "which catches changes whose event was missed.",
    )
