"""The benchmark's workflows, declared with the SDK as a user declares theirs.

Every task is :func:`bench.dispatch.noop.noop` under its own task id, asking for
100 millicores and 64 MiB so that the agent's offer (:attr:`Plan.slots` times that)
bounds how many run at once, as a node's size does.
"""

from __future__ import annotations

from bench.dispatch import noop
from strata.api.scheduler.v1.scheduler_pb2 import WorkflowSpec
from strata.sdk.workflows import Workflow

TASK_CPU_MILLIS = 100
TASK_MEMORY = "64Mi"


def chain(name: str, length: int) -> WorkflowSpec:
    """``length`` no-ops, each depending on the one before: ``t000 → t001 → …``."""
    workflow = Workflow(name, cpu=f"{TASK_CPU_MILLIS}m", memory=TASK_MEMORY)
    for index in range(length):
        upstream = [task_id(index - 1)] if index else []
        workflow.task(task_id=task_id(index), depends_on=upstream)(noop.noop)
    return workflow.to_spec()


def fanout(name: str, width: int) -> WorkflowSpec:
    """``width`` independent no-ops."""
    workflow = Workflow(name, cpu=f"{TASK_CPU_MILLIS}m", memory=TASK_MEMORY)
    for index in range(width):
        workflow.task(task_id=task_id(index))(noop.noop)
    return workflow.to_spec()


def task_id(index: int) -> str:
    """Task ids that sort in chain order."""
    return f"t{index:03d}"
