"""The registry's own settings (``STRATA_REGISTRY_*``); the shared ones are the runtime's."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from strata.registry.domain.limits import SizeLimits

GIB = 1024**3
MIB = 1024**2


class RegistrySettings(BaseSettings):
    """How large an artifact of each kind may be, in bytes; how long served predictions
    are kept; where the scheduler answers.

    An upload announcing more is refused from its header, before any byte is stored,
    and the bytes of an upload never exceed what its header announced.
    """

    model_config = SettingsConfigDict(env_prefix="STRATA_REGISTRY_", extra="ignore", frozen=True)

    max_onnx_model_bytes: int = Field(
        2 * GIB - 1,
        ge=1,
        description="Largest ONNX model; protobuf cannot parse a file past 2 GiB, and "
        "models kept in external data files are refused, so larger cannot be served.",
    )
    max_report_bytes: int = Field(
        256 * MIB, ge=1, description="Largest report or plot (JSON, HTML, PNG, CSV)."
    )
    max_data_sample_bytes: int = Field(
        1 * GIB, ge=1, description="Largest data sample (e.g. Parquet rows)."
    )

    predictions_retention: timedelta = Field(
        timedelta(days=30),
        gt=timedelta(0),
        description="How long a served prediction is kept for lineage and skew reports, "
        "from the time it was served, as an ISO 8601 duration (P30D, PT12H); older ones are "
        "pruned.",
    )
    scheduler: str = Field(
        "127.0.0.1:50051",
        description="host:port of the scheduler, asked for the task attempts (node, times) "
        "of the run a prediction's model version was trained by.",
    )

    def limits(self) -> SizeLimits:
        return SizeLimits(
            onnx_model=self.max_onnx_model_bytes,
            report=self.max_report_bytes,
            data_sample=self.max_data_sample_bytes,
        )
