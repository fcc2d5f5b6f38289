"""Which run, task and attempt a task is running as: :func:`task_context`.

The agent starts each attempt with its context in environment variables
(``STRATA_RUN_ID``, ``STRATA_WORKFLOW``, ``STRATA_TASK_ID``, ``STRATA_ATTEMPT``,
``STRATA_NODE_ID``; processes the task starts inherit them), so a task knows its run
without asking the scheduler::

    from strata.sdk.workflows import task_context

    @flow.task(retry=Retry(attempts=3))
    def train():
        context = task_context()
        print(f"run {context.run_id}, attempt {context.attempt}")
"""

from __future__ import annotations

import os

from strata.core.task_context import TaskContext, from_environment

__all__ = ["TaskContext", "task_context"]


def task_context() -> TaskContext:
    """The context of the attempt this process runs; a RuntimeError naming the variable
    that is missing when the code runs outside a Strata task."""
    return from_environment(os.environ)
