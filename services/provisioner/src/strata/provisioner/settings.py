"""The provisioner's own settings (``STRATA_PROVISIONER_*``): how often it looks anyway,
and how long a silent node keeps its work.

Placement and delivery are woken when the queue or a node's placements change
(:mod:`strata.provisioner.wakeups`); these polls are the safety net that bounds
how late a missed wake-up leaves an attempt. The lease
(:mod:`strata.provisioner.domain.lease`) is what a lost node costs: its attempts
are retried elsewhere only once it has passed.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from strata.provisioner.domain.lease import LEASE


class ProvisionerSettings(BaseSettings):
    """How often the provisioner looks for work without being woken; how long a lease is."""

    model_config = SettingsConfigDict(env_prefix="STRATA_PROVISIONER_", extra="ignore", frozen=True)

    placement_poll: float = Field(
        0.2, gt=0, description="Most seconds between placement rounds when nothing wakes them."
    )
    delivery_poll: float = Field(
        0.1,
        gt=0,
        description="Most seconds between a Connect session's looks at its node's placements.",
    )
    lease: timedelta = Field(
        LEASE,
        gt=timedelta(0),
        description="How long a node counts as alive without a message from its agent, as an "
        "ISO 8601 duration (PT15S); agents heartbeat every third of it. Past it the node is "
        "lost and its attempts are retried elsewhere.",
    )
