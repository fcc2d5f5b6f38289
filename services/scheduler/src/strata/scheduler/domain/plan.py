"""A workflow version read once for running it: DAG order, upstream sets, retry
policies, compiled conditions, what each task asks for and who applied the version,
so that advancing a run never re-reads the spec.

The spec was validated at apply (a DAG, known dependencies, conditions that
compile), so building a plan only reshapes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from graphlib import TopologicalSorter
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError

from strata.api.common.v1.resources_pb2 import Resources as ResourcesMessage
from strata.api.scheduler.v1.scheduler_pb2 import (
    TRIGGER_RULE_ALL_SUCCEEDED,
    RetryPolicy,
    TaskSpec,
    TriggerRule,
    WorkflowSpec,
)
from strata.scheduler.domain.resources import Resources


@dataclass(frozen=True)
class Retry:
    """How many attempts a task gets and how long it waits between them."""

    max_attempts: int = 1
    initial_backoff: timedelta = timedelta(0)
    multiplier: float = 1.0
    max_backoff: timedelta | None = None

    @classmethod
    def of(cls, policy: RetryPolicy) -> Retry:
        return cls(
            max_attempts=max(policy.max_attempts, 1),
            initial_backoff=policy.initial_backoff.ToTimedelta(),
            multiplier=max(policy.backoff_multiplier, 1.0),
            max_backoff=policy.max_backoff.ToTimedelta()
            if policy.HasField("max_backoff")
            else None,
        )

    def backoff(self, failed_attempt: int) -> timedelta:
        """The wait after attempt ``failed_attempt`` (from 1) before the next one."""
        wait = self.initial_backoff * self.multiplier ** (failed_attempt - 1)
        if self.max_backoff is not None and self.max_backoff > timedelta(0):
            wait = min(wait, self.max_backoff)
        return wait


class Condition:
    """A task's CEL condition, compiled once, evaluated over params and upstream outputs."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        environment = celpy.Environment()
        self._program = environment.program(environment.compile(expression))

    def holds(self, params: Mapping[str, Any], outputs: Mapping[str, Any]) -> bool:
        """Whether the condition is true; ValueError when it errs or is not a bool."""
        try:
            value = self._program.evaluate(
                {
                    "params": json_to_cel(dict(params)),
                    "outputs": json_to_cel(dict(outputs)),
                }
            )
        except CELEvalError as error:
            raise ValueError(
                f"condition {self.expression!r} could not be evaluated: {error.args[0]}"
            ) from None
        if not isinstance(value, BoolType):
            raise ValueError(
                f"condition {self.expression!r} gave {type(value).__name__} {value!r}, "
                "expected a bool"
            )
        return bool(value)


@dataclass(frozen=True)
class TaskPlan:
    """One task of the plan: its spec, direct and indirect upstream tasks, retry, condition,
    and what it asks for (its resources, else the workflow's default)."""

    spec: TaskSpec
    upstream: tuple[str, ...]
    ancestors: frozenset[str]
    trigger_rule: TriggerRule.ValueType
    retry: Retry
    condition: Condition | None
    requested: Resources


@dataclass(frozen=True)
class RunPlan:
    """Every task of a workflow version, in DAG order (each after its upstream tasks),
    and who applied the version (whom its runs' attempts run for when no one started
    them by hand)."""

    workflow: WorkflowSpec
    tasks: Mapping[str, TaskPlan]
    order: tuple[str, ...]
    applied_by: str = ""

    @classmethod
    def of(cls, workflow: WorkflowSpec, applied_by: str = "") -> RunPlan:
        specs = {task.task_id: task for task in workflow.tasks}
        position = {task.task_id: i for i, task in enumerate(workflow.tasks)}
        sorter = TopologicalSorter({tid: task.depends_on for tid, task in specs.items()})
        sorter.prepare()
        order: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=position.__getitem__)
            order.extend(ready)
            sorter.done(*ready)
        ancestors: dict[str, frozenset[str]] = {}
        for tid in order:
            direct = set(specs[tid].depends_on)
            ancestors[tid] = frozenset(direct.union(*(ancestors[up] for up in direct)))
        tasks = {
            tid: TaskPlan(
                spec=specs[tid],
                upstream=tuple(specs[tid].depends_on),
                ancestors=ancestors[tid],
                # UNSPECIFIED (0) means ALL_SUCCEEDED.
                trigger_rule=specs[tid].trigger_rule or TRIGGER_RULE_ALL_SUCCEEDED,
                retry=Retry.of(
                    specs[tid].retry if specs[tid].HasField("retry") else workflow.default_retry
                ),
                condition=Condition(specs[tid].condition) if specs[tid].condition else None,
                requested=_resources(
                    specs[tid].resources
                    if specs[tid].HasField("resources")
                    else workflow.default_resources
                ),
            )
            for tid in order
        }
        return cls(workflow=workflow, tasks=tasks, order=tuple(order), applied_by=applied_by)


def _resources(message: ResourcesMessage) -> Resources:
    return Resources(message.cpu_millis, message.memory_bytes, message.gpus)
