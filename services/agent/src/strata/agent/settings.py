"""The agent's own settings (``STRATA_AGENT_*``): where the provisioner is, what the node offers.

Capacity defaults to the machine (every CPU, its physical memory less a margin for
the agent and the system); set it lower to keep room for other work on the node.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _machine_cpu_millis() -> int:
    return (os.cpu_count() or 1) * 1000


def _default_state_dir() -> Path:
    return Path(tempfile.gettempdir()) / "strata-agent"


def _machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _offered_memory_bytes(margin: float) -> int:
    return int(_machine_memory_bytes() * (1 - margin))


class AgentSettings(BaseSettings):
    """What one node agent offers and where it reports."""

    model_config = SettingsConfigDict(env_prefix="STRATA_AGENT_", extra="ignore", frozen=True)

    provisioner: str = Field(
        "127.0.0.1:50052", description="host:port of the provisioner's gRPC server."
    )
    node_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Stable node id, unique in the cluster; default: the host name.",
    )
    cpu_millis: int = Field(
        default_factory=_machine_cpu_millis,
        gt=0,
        description="CPU offered to tasks, in millicores; default: every CPU of the machine.",
    )
    memory_margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description=(
            "Share of the machine's physical memory not offered to tasks when memory_bytes "
            "is unset. Attempts together never hold more than the node offers (past it, the "
            "one furthest above its reservation is evicted), but the agent samples them every "
            "0.1 s, so a task allocating fast overshoots by what it allocates in between, and "
            "the agent, the system and the page cache need memory too: 5 % keeps them, and "
            "the kernel's out-of-memory killer (which picks by its own score), out of reach."
        ),
    )
    memory_bytes: int = Field(
        default_factory=lambda data: _offered_memory_bytes(data["memory_margin"]),
        gt=0,
        description=(
            "Memory offered to tasks, in bytes: placement fills it with reservations, and "
            "attempts holding more together are evicted; default: the machine's physical "
            "memory less memory_margin."
        ),
    )
    gpus: int = Field(0, ge=0, description="GPUs offered to tasks.")
    labels: dict[str, str] = Field(
        default_factory=dict, description='JSON labels placement selects on, e.g. {"zone": "a"}.'
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description=(
            "Folder the agent keeps node state in: the code bundles it fetched, under "
            "bundles/<sha256>/; default: strata-agent in the system's temporary folder."
        ),
    )
    spare_workers: int = Field(
        2,
        ge=0,
        description=(
            "Worker processes kept started ahead, each used for one attempt, so an attempt "
            "starts without spawning one; 0 spawns each attempt's worker when it starts."
        ),
    )
    reconnect_initial: float = Field(
        0.5, gt=0, description="Seconds before the first reconnect after the stream drops."
    )
    reconnect_max: float = Field(
        15.0, gt=0, description="Longest wait between reconnects (the backoff doubles up to it)."
    )
