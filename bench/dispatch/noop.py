"""The task every benchmark workflow runs, imported by the agent's worker processes.

It records the moment its code ran, ``time.time_ns()``, in its outputs; the benchmark
compares that with the events' times. It imports nothing else, so a worker's start
costs only what the agent itself costs.
"""

from __future__ import annotations

import time
from typing import Any


def noop(**upstream: Any) -> dict[str, int]:
    """Ignore the upstream outputs the agent passes by task id; say when this ran."""
    return {"ran_ns": time.time_ns()}
