"""What an agent may register as: a named node with capacity that can hold a task.

Checked before anything is stored, so a misconfigured agent is refused on its
first message with the field it got wrong, instead of joining as a node that
nothing can ever be placed on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from strata.core.errors import InvalidArgumentError
from strata.provisioner.domain.resources import Resources

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


@dataclass(frozen=True)
class Registration:
    """A node as its agent introduced it."""

    node_id: str
    hostname: str
    capacity: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    agent_version: str = ""
    warm_bundles: Sequence[str] = ()


def check(registration: Registration) -> Registration:
    """Return ``registration`` if it is a node work can be placed on; raise otherwise."""
    if not _NODE_ID.fullmatch(registration.node_id):
        raise InvalidArgumentError(
            "registration.node_id",
            f"{registration.node_id!r} is not a node id: expected letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, at most 253 characters",
        )
    capacity = registration.capacity
    if capacity.cpu_millis <= 0:
        raise InvalidArgumentError(
            "registration.capacity.cpu_millis",
            f"must be positive (thousandths of a core), got {capacity.cpu_millis}",
        )
    if capacity.memory_bytes <= 0:
        raise InvalidArgumentError(
            "registration.capacity.memory_bytes",
            f"must be positive (bytes), got {capacity.memory_bytes}",
        )
    if capacity.gpus < 0:
        raise InvalidArgumentError(
            "registration.capacity.gpus", f"must be 0 or more, got {capacity.gpus}"
        )
    return registration
