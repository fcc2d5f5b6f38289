"""What became of one attempt in its worker, and what it used."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Measured use of one attempt's worker process."""

    peak_rss_bytes: int
    cpu_seconds: float
    wall_seconds: float
    mean_rss_bytes: int = 0
    """Time-weighted mean of the agent's samples (:class:`~strata.agent.domain.usage.HeldMemory`);
    0: never sampled."""

    @property
    def average_cpu_millis(self) -> int:
        """CPU used over the attempt's wall time, in millicores (1000: one busy core)."""
        if self.wall_seconds <= 0:
            return 0
        return round(self.cpu_seconds / self.wall_seconds * 1000)


@dataclass(frozen=True)
class Finished:
    """The entrypoint returned ``outputs``, a JSON object."""

    outputs: dict[str, Any]
    usage: Usage


@dataclass(frozen=True)
class Failed:
    """The entrypoint raised, could not be loaded, or its worker died.

    ``exit_code`` is set when the worker process itself ended abnormally (a crash,
    a signal: negative, as :mod:`multiprocessing` reports it).
    """

    error_type: str
    message: str
    traceback: str
    usage: Usage
    exit_code: int = 0

    @property
    def summary(self) -> str:
        """One line for people, e.g. ``ValueError: column 'eta' missing``."""
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"{self.error_type}: {first}" if first else self.error_type


class StopKind(Enum):
    """Why the agent stopped a worker before its entrypoint returned."""

    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out of memory"
    TIMEOUT = "timeout"
    EVICTED = "evicted"
    """The node's attempts together outgrew its memory and this one was furthest above
    its reservation (:mod:`strata.agent.domain.pressure`)."""


@dataclass(frozen=True)
class Stopped:
    """The agent stopped the worker (SIGTERM, then SIGKILL after a grace): ``message``
    says why, for people."""

    kind: StopKind
    message: str
    usage: Usage


@dataclass(frozen=True)
class Unusable:
    """An attempt that never ran: its code bundle could not be used, for ``reason``."""

    reason: str


Outcome = Finished | Failed | Stopped
