"""What each task asked for, what placement reserved for its latest attempt and what
that attempt used at its peak, written for people: ``4 GiB asked · 1.5 GiB reserved ·
1.2 GiB used``.

People misjudge what a task needs; putting the three side by side is how they see it
(and see what the provisioner learned). The hard limit shows only when it differs
from the request (raised after an out-of-memory retry). Figures not known yet (not
placed, not ended) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.table import Table

from strata.api.scheduler.v1 import scheduler_pb2 as pb

GIB = 2**30
MIB = 2**20


def memory(amount: int) -> str:
    """``4 GiB``, ``1.5 GiB``, ``512 MiB``: one decimal at most, whole MiB below a GiB."""
    if amount >= GIB:
        return f"{_tenths(amount / GIB)} GiB"
    if amount >= MIB:
        return f"{round(amount / MIB)} MiB"
    return f"{amount} bytes"


def cores(millis: int) -> str:
    """``2``, ``0.5``, ``1.25``: cores, two decimals at most."""
    return f"{millis / 1000:.2f}".rstrip("0").rstrip(".")


def memory_use(task: pb.TaskInstance) -> str:
    """Memory asked, limit (when raised), reserved and used, of ``task``."""
    return _use(task, lambda amounts: amounts.memory_bytes, memory, "memory")


def cpu_use(task: pb.TaskInstance) -> str:
    """CPU cores asked, limit (when it differs), reserved and used, of ``task``."""
    return _use(task, lambda amounts: amounts.cpu_millis, lambda m: f"{cores(m)} CPU", "cpu")


def usage_table(tasks: Sequence[pb.TaskInstance]) -> Table | None:
    """One row per task: memory and CPU asked, reserved and used; None when the run
    knows none of it (recorded before the scheduler kept it)."""
    known = [t for t in tasks if t.HasField("requested") or t.HasField("limits")]
    if not known:
        return None
    table = Table("task", "memory", "cpu")
    for task in known:
        table.add_row(task.task_id, memory_use(task), cpu_use(task))
    return table


def _use(
    task: pb.TaskInstance,
    amount: Callable[[Any], int],
    written: Callable[[int], str],
    kind: str,
) -> str:
    parts: list[str] = []
    asked = amount(task.requested) if task.HasField("requested") else None
    if asked is not None:
        parts.append(f"{written(asked)} asked" if asked else f"no {kind} asked")
    if task.HasField("limits") and amount(task.limits) != asked:
        parts.append(f"limit {written(amount(task.limits))}")
    if task.HasField("reserved"):
        parts.append(f"{written(amount(task.reserved))} reserved")
    if task.HasField("peak_usage"):
        parts.append(f"{written(amount(task.peak_usage))} used")
    return " · ".join(parts) or "-"


def _tenths(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
