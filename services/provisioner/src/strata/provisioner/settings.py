"""The provisioner's own settings (``STRATA_PROVISIONER_*``): how often it looks anyway.

Placement and delivery are woken when the queue or a node's placements change
(:mod:`strata.provisioner.wakeups`); these polls are the safety net that bounds
how late a missed wake-up leaves an attempt.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProvisionerSettings(BaseSettings):
    """How often the provisioner looks for work without being woken."""

    model_config = SettingsConfigDict(env_prefix="STRATA_PROVISIONER_", extra="ignore", frozen=True)

    placement_poll: float = Field(
        0.2, gt=0, description="Most seconds between placement rounds when nothing wakes them."
    )
    delivery_poll: float = Field(
        0.1,
        gt=0,
        description="Most seconds between a Connect session's looks at its node's placements.",
    )
