"""What a task asked for, what its attempt was given and what it used, as the run keeps
them so that people can compare the three (``strata workflow status``).

The provisioner decides limits and reservations (it learns them from past attempts);
the scheduler only records what it is told, per task instance, for the latest
attempt.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """An amount of compute: CPU in thousandths of a core, memory in bytes, whole GPUs."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0


@dataclass(frozen=True)
class Usage:
    """What an attempt measurably used at its peak, as its agent sampled it."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu_percent: float = 0.0
    gpu_memory_bytes: int = 0
