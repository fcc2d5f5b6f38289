"""Apply-time validation of a WorkflowSpec: refuse what could never run, before storing it.

Each problem is an :class:`~strata.core.errors.InvalidArgumentError` whose field is
the path a user would look at, naming the task by id (``tasks[train].resources``),
so the error points at the line of the declaration to fix. The first problem found
is reported; checks run from the workflow's own fields to its tasks, then the DAG.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from graphlib import CycleError, TopologicalSorter
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from strata.api.common.v1.resources_pb2 import Resources
from strata.api.scheduler.v1.scheduler_pb2 import RetryPolicy, TaskSpec, Trigger, WorkflowSpec
from strata.core.errors import InvalidArgumentError
from strata.scheduler.domain.conditions import referenced_outputs
from strata.scheduler.domain.node_classes import NODE_CLASSES, NodeClass

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""Workflow names and task ids: lower-case letters, digits and '-', at most 63 characters."""
ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
"""``package.module:function``, or ``module:Class.method``: something an agent can import."""


def validate(spec: WorkflowSpec, node_classes: Sequence[NodeClass] = NODE_CLASSES) -> None:
    """Raise InvalidArgumentError for the first reason ``spec`` could never run as declared."""
    _check_name(spec.name, "name")
    if spec.max_active_runs < 0:
        raise InvalidArgumentError(
            "max_active_runs", f"must be 0 (no limit) or more, got {spec.max_active_runs}"
        )
    if not spec.tasks:
        raise InvalidArgumentError("tasks", "a workflow needs at least one task")
    for index, trigger in enumerate(spec.triggers):
        _check_trigger(trigger, f"triggers[{index}]")
    if spec.HasField("default_retry"):
        _check_retry(spec.default_retry, "default_retry")
    tasks: dict[str, TaskSpec] = {}
    for index, task in enumerate(spec.tasks):
        _check_name(task.task_id, f"tasks[{index}].task_id")
        if task.task_id in tasks:
            raise InvalidArgumentError(f"tasks[{task.task_id}].task_id", "is declared twice")
        tasks[task.task_id] = task
    for task in spec.tasks:
        _check_task(task, tasks, spec, node_classes)
    upstream = _upstream(tasks)
    for task in spec.tasks:
        _check_condition(task, upstream[task.task_id])


def _check_task(
    task: TaskSpec,
    tasks: Mapping[str, TaskSpec],
    spec: WorkflowSpec,
    node_classes: Sequence[NodeClass],
) -> None:
    where = f"tasks[{task.task_id}]"
    if not ENTRYPOINT.match(task.entrypoint):
        raise InvalidArgumentError(
            f"{where}.entrypoint", f"expected 'package.module:function', got {task.entrypoint!r}"
        )
    for dependency in task.depends_on:
        if dependency not in tasks:
            raise InvalidArgumentError(
                f"{where}.depends_on", f"names {dependency!r}, which is not a task of the workflow"
            )
        if dependency == task.task_id:
            raise InvalidArgumentError(f"{where}.depends_on", "a task cannot depend on itself")
    if task.HasField("retry"):
        _check_retry(task.retry, f"{where}.retry")
    if task.HasField("timeout") and task.timeout.ToTimedelta().total_seconds() <= 0:
        raise InvalidArgumentError(f"{where}.timeout", "must be positive when set")
    if task.HasField("resources"):
        _check_resources(task.resources, f"{where}.resources", node_classes)
    elif spec.HasField("default_resources"):
        _check_resources(
            spec.default_resources, f"{where}.resources (from default_resources)", node_classes
        )


def _upstream(tasks: Mapping[str, TaskSpec]) -> dict[str, set[str]]:
    """Each task's upstream tasks, direct or not; InvalidArgumentError on a cycle."""
    graph = {tid: list(task.depends_on) for tid, task in tasks.items()}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        cycle: list[str] = error.args[1]
        path = " -> ".join(reversed(cycle))
        raise InvalidArgumentError(
            f"tasks[{cycle[0]}].depends_on", f"the dependencies form a cycle: {path}"
        ) from None
    upstream: dict[str, set[str]] = {}
    for tid in order:
        upstream[tid] = set()
        for dependency in graph[tid]:
            upstream[tid] |= {dependency, *upstream[dependency]}
    return upstream


def _check_condition(task: TaskSpec, upstream: set[str]) -> None:
    if not task.condition:
        return
    field = f"tasks[{task.task_id}].condition"
    for name in sorted(referenced_outputs(task.condition, field) - upstream):
        raise InvalidArgumentError(
            field,
            f"reads outputs of {name!r}, which is not upstream of {task.task_id!r} "
            f"(upstream: {', '.join(sorted(upstream)) or 'none'})",
        )


def _check_resources(request: Resources, field: str, node_classes: Sequence[NodeClass]) -> None:
    dimensions = (
        ("cpu_millis", request.cpu_millis, max(c.cpu_millis for c in node_classes)),
        ("memory_bytes", request.memory_bytes, max(c.memory_bytes for c in node_classes)),
        ("gpus", request.gpus, max(c.gpus for c in node_classes)),
    )
    for name, asked, largest in dimensions:
        if asked < 0:
            raise InvalidArgumentError(f"{field}.{name}", f"must not be negative, got {asked}")
        if asked > largest:
            raise InvalidArgumentError(
                f"{field}.{name}",
                f"asks for {asked}, more than any node class offers (largest: {largest})",
            )
    if not any(c.holds(request) for c in node_classes):
        offered = "; ".join(
            f"{c.name}: {c.cpu_millis} cpu_millis, {c.memory_bytes} memory_bytes, {c.gpus} gpus"
            for c in node_classes
        )
        raise InvalidArgumentError(field, f"no node class holds this request at once ({offered})")


def _check_retry(policy: RetryPolicy, field: str) -> None:
    if policy.initial_backoff.ToTimedelta().total_seconds() < 0:
        raise InvalidArgumentError(f"{field}.initial_backoff", "must not be negative")
    if (
        policy.HasField("max_backoff")
        and policy.max_backoff.ToTimedelta() < policy.initial_backoff.ToTimedelta()
    ):
        raise InvalidArgumentError(f"{field}.max_backoff", "must be at least initial_backoff")


def _check_trigger(trigger: Trigger, field: str) -> None:
    kind = trigger.WhichOneof("kind")
    if kind == "cron":
        _check_cron(trigger.cron.expression, trigger.cron.time_zone, f"{field}.cron")
    elif kind == "data_arrival":
        if not trigger.data_arrival.dataset:
            raise InvalidArgumentError(
                f"{field}.data_arrival.dataset", "must name the dataset to watch"
            )
    else:
        raise InvalidArgumentError(field, "expected a cron or a data_arrival trigger, got neither")


def _check_cron(expression: str, time_zone: str, field: str) -> None:
    try:
        zone = ZoneInfo(time_zone) if time_zone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(
            f"{field}.time_zone",
            f"expected an IANA time zone like 'Europe/Paris', got {time_zone!r}",
        ) from None
    if len(expression.split()) != 5:
        raise InvalidArgumentError(
            f"{field}.expression",
            f"expected five fields (minute hour day month weekday), got {expression!r}",
        )
    try:
        CronSim(expression, datetime.now(zone))
    except CronSimError as error:
        raise InvalidArgumentError(f"{field}.expression", f"{error} in {expression!r}") from None


def _check_name(name: str, field: str) -> None:
    if not NAME.match(name):
        raise InvalidArgumentError(
            field,
            f"expected lower-case letters, digits and '-' (at most 63, not starting or "
            f"ending with '-'), got {name!r}",
        )
