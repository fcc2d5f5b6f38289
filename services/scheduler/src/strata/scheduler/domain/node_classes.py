"""The sizes of node the platform can provide, written down once.

Apply-time validation refuses a task that no class could ever hold, since it would
wait for placement forever. Until the provisioner owns this list (per provider,
from its settings) it is a constant here.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.api.common.v1.resources_pb2 import Resources

GIB = 2**30


@dataclass(frozen=True)
class NodeClass:
    """A size of node: what one machine of it offers."""

    name: str
    cpu_millis: int
    memory_bytes: int
    gpus: int

    def holds(self, request: Resources) -> bool:
        return (
            request.cpu_millis <= self.cpu_millis
            and request.memory_bytes <= self.memory_bytes
            and request.gpus <= self.gpus
        )


NODE_CLASSES: tuple[NodeClass, ...] = (
    NodeClass("standard", cpu_millis=8_000, memory_bytes=32 * GIB, gpus=0),
    NodeClass("gpu", cpu_millis=8_000, memory_bytes=32 * GIB, gpus=1),
)
"""The classes on offer; the largest holds 8 CPU, 32 GiB and 1 GPU."""
