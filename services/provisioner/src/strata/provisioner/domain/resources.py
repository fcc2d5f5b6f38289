"""Amounts of CPU, memory and GPUs: what a node offers, what an attempt asks for.

One frozen type for both, so "does it fit" and "what is left" are plain
arithmetic, and one way to print them in the reasons people read.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True, order=True)
class Resources:
    """CPU in millicores, memory in bytes, whole GPUs."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    def fits_in(self, room: Resources) -> bool:
        """True when every amount is at most the one in ``room``."""
        return (
            self.cpu_millis <= room.cpu_millis
            and self.memory_bytes <= room.memory_bytes
            and self.gpus <= room.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.gpus - other.gpus,
        )

    def __str__(self) -> str:
        return f"{cpu(self.cpu_millis)}, {memory(self.memory_bytes)} memory, {gpus(self.gpus)}"


def cpu(millis: int) -> str:
    """``2 CPU``, ``0.5 CPU``, ``10000 CPU``: exact, never in exponent notation."""
    whole, rest = divmod(millis, 1000)
    return f"{whole} CPU" if not rest else f"{millis / 1000:.3f}".rstrip("0") + " CPU"


def memory(amount: int) -> str:
    """``64 GiB``, ``512 MiB``, ``1.5 GiB``, or bytes below a MiB."""
    if amount >= GIB:
        return f"{amount / GIB:.4g} GiB"
    if amount >= MIB:
        return f"{amount / MIB:.4g} MiB"
    return f"{amount} bytes"


def gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"
