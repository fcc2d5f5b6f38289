"""Declare workflows in Python and compile them to the scheduler's ``WorkflowSpec``."""

from strata.sdk.workflows.context import TaskContext, task_context
from strata.sdk.workflows.policy import Retry
from strata.sdk.workflows.resources import Resources
from strata.sdk.workflows.triggers import Cron, DataArrival
from strata.sdk.workflows.workflow import Task, TriggerRule, Workflow

__all__ = [
    "Cron",
    "DataArrival",
    "Resources",
    "Retry",
    "Task",
    "TaskContext",
    "TriggerRule",
    "Workflow",
    "task_context",
]
