"""The provisioner's own settings (``STRATA_PROVISIONER_*``): how often it looks anyway,
how long a silent node keeps its work, and where more nodes come from.

Placement and delivery are woken when the queue or a node's placements change
(:mod:`strata.provisioner.wakeups`); these polls are the safety net that bounds
how late a missed wake-up leaves an attempt. The lease
(:mod:`strata.provisioner.domain.lease`) is what a lost node costs: its attempts
are retried elsewhere only once it has passed.

Node classes (``STRATA_PROVISIONER_NODE_CLASSES``) are the sizes of node the
provisioner may start when attempts wait for room (:mod:`strata.provisioner.fleet`);
without any, nodes join by themselves as before. A class whose amounts cannot be
read refuses the start with the class and field named.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from strata.provisioner.domain.lease import LEASE
from strata.provisioner.domain.queues import QueueError, parse_quota
from strata.provisioner.domain.resources import Resources
from strata.provisioner.providers import NodeClassSpec

PROVIDERS = ("local", "kubernetes")
"""The providers of compute the provisioner knows."""


def _default_local_state_dir() -> Path:
    return Path(tempfile.gettempdir()) / "strata-provisioner-local"


def _machine() -> Resources:
    return Resources(
        cpu_millis=(os.cpu_count() or 1) * 1000,
        memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    )


class NodeClassSetting(BaseModel):
    """One node class as written in the JSON setting; amounts are Kubernetes quantities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    cpu: str
    memory: str
    gpu: int = Field(0, ge=0)
    min: int = Field(0, ge=0)
    max: int = Field(10, ge=0)


def node_class_spec(name: str, setting: NodeClassSetting) -> NodeClassSpec:
    """The class as the fleet uses it; a wrong field raises ``ValueError`` naming it."""
    where = f"node class {name!r}"
    if setting.provider not in PROVIDERS:
        raise ValueError(
            f"{where}: provider {setting.provider!r} is not known: expected one of "
            f"{', '.join(PROVIDERS)}"
        )
    try:
        amounts = parse_quota({"cpu": setting.cpu, "memory": setting.memory})
    except QueueError as exc:
        raise ValueError(f"{where}: {exc.field.removeprefix('quota.')}: {exc.message}") from exc
    capacity = Resources(amounts.cpu_millis or 0, amounts.memory_bytes or 0, setting.gpu)
    if capacity.cpu_millis <= 0 or capacity.memory_bytes <= 0:
        raise ValueError(f"{where}: cpu and memory must be more than 0, got {capacity}")
    if setting.min > setting.max:
        raise ValueError(f"{where}: min {setting.min} is above max {setting.max}")
    return NodeClassSpec(
        name=name,
        provider=setting.provider,
        capacity=capacity,
        min_nodes=setting.min,
        max_nodes=setting.max,
    )


class ProvisionerSettings(BaseSettings):
    """How often the provisioner looks for work without being woken; how long a lease is;
    which node classes it may start, and with which provider."""

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
    node_classes: dict[str, NodeClassSpec] = Field(
        default_factory=dict,
        description='Node classes the provisioner may start, as JSON: {"small": {"provider": '
        '"local", "cpu": "2", "memory": "8Gi", "gpu": 0, "min": 0, "max": 4}}; none (the '
        "default): nodes join by themselves.",
    )
    idle_after: timedelta = Field(
        timedelta(minutes=5),
        gt=timedelta(0),
        description="How long a started node may sit without attempts before it is drained "
        "and stopped (beyond its class's min), as an ISO 8601 duration (PT5M).",
    )
    reserve_memory_from: Literal["peak", "mean"] = Field(
        "mean",
        description="What placement reserves memory from, once a task has 3 measured past "
        "attempts: 'mean' (p95 of the memory they held on average, time-weighted, + 15 %: a "
        "task that peaks briefly reserves what it usually holds; when the peaks of a node's "
        "attempts meet past its memory, its agent evicts the attempt furthest above its "
        "reservation, retried without spending a retry) or 'peak' (p95 of their peaks + "
        "15 %: a node is never over-committed, and more nodes run). Either way at most the "
        "request, which stays the attempt's hard limit.",
    )
    fleet_poll: float = Field(
        2.0, gt=0, description="Most seconds between the fleet's looks at waiting attempts."
    )
    local_cpu_millis: int = Field(
        default_factory=lambda: _machine().cpu_millis,
        gt=0,
        description="CPU the local provider's agents may offer in all, in millicores; "
        "default: every CPU of the machine.",
    )
    local_memory_bytes: int = Field(
        default_factory=lambda: _machine().memory_bytes,
        gt=0,
        description="Memory the local provider's agents may offer in all, in bytes; "
        "default: the machine's physical memory.",
    )
    local_gpus: int = Field(0, ge=0, description="GPUs the local provider's agents may offer.")
    local_state_dir: Path = Field(
        default_factory=_default_local_state_dir,
        description="Folder of the local provider's agents: each one's log "
        "(<node_id>.log) and state folder (<node_id>/).",
    )
    local_provisioner_address: str = Field(
        "",
        description="host:port the local agents reach this provisioner at; default: "
        "127.0.0.1 and the provisioner's gRPC port.",
    )
    local_agent_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment added to the local agents', as JSON, e.g. {\"STRATA_AUTH_"
        'CLIENT_TOKEN": "..."}; they inherit the provisioner\'s own otherwise.',
    )
    kubernetes_kubeconfig: Path | None = Field(
        None, description="kubeconfig file of the cluster the kubernetes provider uses."
    )
    kubernetes_server: str = Field(
        "", description="API server URL of that cluster, when no kubeconfig is given."
    )
    kubernetes_token_file: Path | None = Field(
        None, description="File holding the bearer token for kubernetes_server."
    )
    kubernetes_ca_file: Path | None = Field(
        None, description="CA bundle the API server's certificate is checked against."
    )
    kubernetes_namespace: str = Field(
        "strata", description="Namespace the kubernetes provider creates agent pods in."
    )
    kubernetes_agent_image: str = Field(
        "strata/agent:latest", description="Container image of the agent pods."
    )
    kubernetes_agent_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the agent pods besides their node id and capacity, as JSON.",
    )
    kubernetes_agent_config_maps: tuple[str, ...] = Field(
        (),
        description="ConfigMaps (in kubernetes_namespace) whose keys become the agent pods' "
        'environment, as JSON, e.g. ["strata-config"]: where the blob store\'s settings go.',
    )
    kubernetes_agent_secrets: tuple[str, ...] = Field(
        (),
        description="Secrets whose keys become the agent pods' environment, as JSON, e.g. "
        '["strata-agent-token"]: credentials stay out of the pod spec.',
    )

    @field_validator("node_classes", mode="before")
    @classmethod
    def _read_node_classes(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        specs: dict[str, NodeClassSpec] = {}
        for name, raw in value.items():
            if isinstance(raw, NodeClassSpec):
                specs[name] = raw
                continue
            setting = NodeClassSetting.model_validate(raw)
            specs[name] = node_class_spec(name, setting)
        return specs

    @property
    def local_budget(self) -> Resources:
        """What the local provider's agents may offer in all."""
        return Resources(self.local_cpu_millis, self.local_memory_bytes, self.local_gpus)
