"""Providers of compute: what the fleet loop asks of a place that starts and stops nodes.

The provisioner places attempts on nodes; when no node has room it can ask a
provider (a local process supervisor, a Kubernetes cluster) for a node of a
*node class* — a named size the operator declared. A provider only starts,
stops and reports nodes; the decisions (which class, when to drain, what is
lost) stay in :mod:`strata.provisioner.fleet` and :mod:`strata.provisioner.domain.scaling`,
so every provider behaves the same to the rest of the system.

A started node is a Strata agent that registers with exactly the ``node_id`` it
was started for: that is how the fleet ties a provisioned node to the node row
its agent's Connect session creates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from strata.provisioner.domain.resources import Resources


@dataclass(frozen=True)
class NodeClassSpec:
    """A node size an operator offers: which provider makes it, how big, how many."""

    name: str
    provider: str
    capacity: Resources
    min_nodes: int = 0
    max_nodes: int = 10


class NodePhase(enum.Enum):
    """Where a started node is, as its provider sees it."""

    STARTING = "starting"
    """Asked for; its agent is not up yet (an image pulling, a pod unscheduled)."""
    RUNNING = "running"
    """Its agent's process or pod runs (it may not have registered yet)."""
    GONE = "gone"
    """It exited or was deleted without being asked: its attempts are lost now."""


@dataclass(frozen=True)
class ObservedNode:
    """One node a provider started and still knows, with what it says about it."""

    node_id: str
    node_class: str
    phase: NodePhase
    message: str = ""
    """Why it is not running yet, for people, e.g. the Kubernetes scheduler's
    ``0/3 nodes are available: ...``; empty when there is nothing to say."""


class ComputeProvider(Protocol):
    """Starts and stops the agents of node classes; the fleet loop drives it."""

    name: str

    async def start(self, node_id: str, node_class: NodeClassSpec) -> None:
        """Start a node of ``node_class`` whose agent registers with exactly ``node_id``."""
        ...

    async def stop(self, node_id: str) -> None:
        """Stop a node after it drained; stopping one already stopped or unknown is a no-op."""
        ...

    async def observe(self) -> list[ObservedNode]:
        """Every node this provider started and still knows, with its phase."""
        ...

    async def check(self) -> str | None:
        """``None`` when the provider can serve; else ``"<address>: <why>"`` for health."""
        ...

    def largest(self) -> Resources | None:
        """The biggest node this provider can give; ``None`` when it cannot tell."""
        ...

    async def close(self) -> None:
        """Release the provider's connections at shutdown. Nodes that outlive the
        provisioner (pods) are left as they are; ones that cannot (the local provider's
        processes) are stopped."""
        ...
