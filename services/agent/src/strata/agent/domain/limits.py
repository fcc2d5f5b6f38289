"""When an attempt has gone past its limits: its memory (the task's ``resources.memory``)
or its timeout.

Memory is the resident set of the worker and every process it started, sampled
by the agent (:mod:`strata.agent.worker`); it is what the node really loses and
what placement reserves. An address-space limit (``RLIMIT_AS``) would count
virtual memory that thread stacks, allocator arenas and mapped files inflate far
beyond real use, failing tasks well under their limit, and it would surface as a
``MemoryError`` inside the task (or a crash) rather than as a limit the agent
enforced and can report as such.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.agent.domain.outcome import StopKind

MIB = 1024**2
GRACE = {StopKind.OUT_OF_MEMORY: 0.0, StopKind.TIMEOUT: 5.0, StopKind.EVICTED: 0.0}
"""Seconds from SIGTERM to SIGKILL: none for memory, the attempt's own or the node's (the
node needs it back now); a little for a timeout, so the task can clean up."""


@dataclass(frozen=True)
class Limits:
    """An attempt's hard limits; 0 memory or no timeout: unlimited."""

    memory_bytes: int = 0
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class Breach:
    """A limit an attempt went past: how to stop it, and why, for people."""

    kind: StopKind
    message: str

    @property
    def grace(self) -> float:
        return GRACE[self.kind]


def breach(limits: Limits, rss_bytes: int, elapsed_seconds: float) -> Breach | None:
    """The limit a worker using ``rss_bytes``, ``elapsed_seconds`` after it started, is past."""
    if limits.memory_bytes > 0 and rss_bytes > limits.memory_bytes:
        return Breach(
            StopKind.OUT_OF_MEMORY,
            f"out of memory: used {rss_bytes / MIB:.0f} MiB, "
            f"over its limit of {limits.memory_bytes / MIB:.0f} MiB",
        )
    if limits.timeout_seconds is not None and elapsed_seconds > limits.timeout_seconds:
        return Breach(
            StopKind.TIMEOUT,
            f"timed out: ran {elapsed_seconds:.1f}s, past its timeout of "
            f"{limits.timeout_seconds:g}s",
        )
    return None
