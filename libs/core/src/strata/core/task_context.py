"""Which run, task and attempt a task is running as: the agent's word to the task.

The agent starts each attempt's worker with its context in environment variables
(:data:`ENVIRONMENT`, written by :meth:`TaskContext.environment`), so a task, and any
process it starts, knows the run it belongs to without asking the scheduler: to name
its run in a model's lineage, to key what it writes by run and attempt, to tell a
retry from the first attempt. Users read it with ``strata.sdk.workflows.task_context``
(:func:`from_environment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RUN_ID = "STRATA_RUN_ID"
WORKFLOW = "STRATA_WORKFLOW"
TASK_ID = "STRATA_TASK_ID"
ATTEMPT = "STRATA_ATTEMPT"
NODE_ID = "STRATA_NODE_ID"
ENVIRONMENT = (RUN_ID, WORKFLOW, TASK_ID, ATTEMPT, NODE_ID)
"""The variables the agent sets for every attempt, in :class:`TaskContext`'s order."""


@dataclass(frozen=True)
class TaskContext:
    """One attempt of one task of one run, as the scheduler numbers it."""

    run_id: str
    workflow: str
    """The workflow's name."""
    task_id: str
    attempt: int
    """Starting at 1; a retry has the next number."""
    node_id: str
    """The agent's node the attempt runs on."""

    def environment(self) -> dict[str, str]:
        """The variables that tell a worker this context."""
        values = (self.run_id, self.workflow, self.task_id, str(self.attempt), self.node_id)
        return dict(zip(ENVIRONMENT, values, strict=True))


def from_environment(environment: Mapping[str, str]) -> TaskContext:
    """The context the variables in ``environment`` tell; a RuntimeError naming the
    variable when one is not set (the code runs outside a Strata task) or the attempt
    is not a number."""
    missing = [name for name in ENVIRONMENT if not environment.get(name)]
    if missing:
        raise RuntimeError(
            f"not running as a Strata task: {missing[0]} is not set (the agent sets "
            f"{', '.join(ENVIRONMENT)} for each attempt)"
        )
    attempt = environment[ATTEMPT]
    if not attempt.isdigit():
        raise RuntimeError(f"{ATTEMPT} must be the attempt number, got {attempt!r}")
    return TaskContext(
        environment[RUN_ID],
        environment[WORKFLOW],
        environment[TASK_ID],
        int(attempt),
        environment[NODE_ID],
    )
