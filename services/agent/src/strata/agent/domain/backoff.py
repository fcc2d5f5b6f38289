"""How long the agent waits before connecting again after its stream dropped."""

from __future__ import annotations

import random


def reconnect_delay(failures: int, initial: float, ceiling: float) -> float:
    """Seconds to wait after ``failures`` consecutive failed sessions (1 or more).

    Exponential with full jitter, so agents that lost the same provisioner do not
    all come back in the same instant.
    """
    if failures < 1:
        raise ValueError(f"failures must be at least 1, got {failures}")
    bound = min(ceiling, initial * 2 ** min(failures - 1, 32))
    return random.uniform(bound / 2, bound)
