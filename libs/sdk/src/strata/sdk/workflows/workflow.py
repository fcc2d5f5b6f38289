"""Declaring a workflow in Python: a :class:`Workflow` and its tasks, decorated functions.

::

    daily = Workflow("daily-train", triggers=[Cron("0 3 * * *", "Europe/Paris")])

    @daily.task(cpu=2, memory="4Gi", retry=Retry(attempts=3))
    def extract(date: str) -> dict[str, int]: ...

    @daily.task(depends_on=[extract], condition="outputs.extract.rows > 0")
    def train() -> dict[str, float]: ...

    spec = daily.to_spec()  # the WorkflowSpec proto the scheduler stores

The decorator returns the function unchanged apart from a ``task`` attribute, so
the code stays plain Python that tests can call. Every check that needs only the
declaration runs in :meth:`Workflow.to_spec`; the scheduler checks again at apply.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from google.protobuf.struct_pb2 import Struct

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.sdk.workflows.conditions import check_condition
from strata.sdk.workflows.policy import Retry, duration
from strata.sdk.workflows.resources import Resources
from strata.sdk.workflows.triggers import Cron, DataArrival

F = TypeVar("F", bound=Callable[..., Any])


class TriggerRule(enum.Enum):
    """Which upstream outcomes let a task run."""

    ALL_SUCCEEDED = pb.TRIGGER_RULE_ALL_SUCCEEDED
    """Every upstream task succeeded; a skipped upstream skips this task too."""
    ALL_DONE = pb.TRIGGER_RULE_ALL_DONE
    """Every upstream task finished, however (clean-up tasks)."""
    ANY_FAILED = pb.TRIGGER_RULE_ANY_FAILED
    """At least one upstream task failed and all finished (alerting tasks)."""


@dataclass(frozen=True)
class Task:
    """One node of the DAG, as declared; :meth:`Workflow.task` builds it."""

    task_id: str
    entrypoint: str
    depends_on: tuple[str, ...] = ()
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCEEDED
    condition: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    resources: Resources | None = None
    retry: Retry | None = None
    timeout: timedelta | None = None

    def to_proto(self) -> pb.TaskSpec:
        where = f"tasks[{self.task_id}]"
        if self.condition:
            check_condition(self.condition, f"{where}.condition")
        spec = pb.TaskSpec(
            task_id=self.task_id,
            entrypoint=self.entrypoint,
            depends_on=self.depends_on,
            trigger_rule=self.trigger_rule.value,
            condition=self.condition,
        )
        if self.args:
            spec.args.CopyFrom(_struct(self.args, f"{where}.args"))
        if self.resources is not None:
            spec.resources.CopyFrom(self.resources.to_proto())
        if self.retry is not None:
            spec.retry.CopyFrom(self.retry.to_proto(f"{where}.retry"))
        if self.timeout is not None:
            if self.timeout <= timedelta(0):
                raise InvalidArgumentError(
                    f"{where}.timeout", f"must be positive, got {self.timeout}"
                )
            spec.timeout.CopyFrom(duration(self.timeout))
        return spec


Upstream = str | Task | Callable[..., Any]
"""A dependency: a task id, a :class:`Task`, or a function decorated with ``@wf.task``."""


class Workflow:
    """A named DAG of tasks with its triggers and defaults; compiles to a WorkflowSpec."""

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        triggers: Iterable[Cron | DataArrival] = (),
        retry: Retry | None = None,
        cpu: float | str | None = None,
        memory: int | str | None = None,
        gpu: int | None = None,
        priority: int = 0,
        queue: str = "",
        max_active_runs: int = 0,
        params: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.triggers = tuple(triggers)
        self.retry = retry
        self.resources = (
            None
            if cpu is None and memory is None and gpu is None
            else Resources.parse(cpu=cpu, memory=memory, gpu=gpu, field="default_resources")
        )
        self.priority = priority
        self.queue = queue
        self.max_active_runs = max_active_runs
        self.params = dict(params or {})
        self.labels = dict(labels or {})
        self._tasks: dict[str, Task] = {}

    @property
    def tasks(self) -> Sequence[Task]:
        return tuple(self._tasks.values())

    def task(
        self,
        *,
        task_id: str | None = None,
        depends_on: Iterable[Upstream] = (),
        trigger_rule: TriggerRule = TriggerRule.ALL_SUCCEEDED,
        condition: str = "",
        args: Mapping[str, Any] | None = None,
        cpu: float | str | None = None,
        memory: int | str | None = None,
        gpu: int | None = None,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
    ) -> Callable[[F], F]:
        """Declare the decorated function as a task of this workflow.

        Its id defaults to the function's name with ``_`` as ``-``; its entrypoint is
        ``module:qualname``. Unset resources and retry fall back to the workflow's.
        """

        def declare(function: F) -> F:
            tid = task_id or function.__name__.replace("_", "-")
            where = f"tasks[{tid}]"
            if "<" in function.__qualname__:
                raise InvalidArgumentError(
                    f"{where}.entrypoint",
                    f"{function.__qualname__!r} cannot be imported by an agent: declare "
                    "tasks as module-level functions",
                )
            if tid in self._tasks:
                raise InvalidArgumentError(
                    f"{where}.task_id", f"workflow {self.name!r} already has a task {tid!r}"
                )
            resources = (
                None
                if cpu is None and memory is None and gpu is None
                else Resources.parse(cpu=cpu, memory=memory, gpu=gpu, field=f"{where}.resources")
            )
            declared = Task(
                task_id=tid,
                entrypoint=f"{function.__module__}:{function.__qualname__}",
                depends_on=tuple(_task_id(u, f"{where}.depends_on") for u in depends_on),
                trigger_rule=trigger_rule,
                condition=condition,
                args=dict(args or {}),
                resources=resources,
                retry=retry,
                timeout=timeout,
            )
            self._tasks[tid] = declared
            function.task = declared  # type: ignore[attr-defined]
            return function

        return declare

    def to_spec(self) -> pb.WorkflowSpec:
        """The WorkflowSpec proto; a declaration error is an InvalidArgumentError naming it."""
        if not self._tasks:
            raise InvalidArgumentError("tasks", f"workflow {self.name!r} declares no task")
        spec = pb.WorkflowSpec(
            name=self.name,
            description=self.description,
            tasks=[t.to_proto() for t in self._tasks.values()],
            triggers=[t.to_proto(f"triggers[{i}]") for i, t in enumerate(self.triggers)],
            priority=self.priority,
            queue=self.queue,
            max_active_runs=self.max_active_runs,
            labels=self.labels,
        )
        if self.params:
            spec.default_params.CopyFrom(_struct(self.params, "default_params"))
        if self.retry is not None:
            spec.default_retry.CopyFrom(self.retry.to_proto("default_retry"))
        if self.resources is not None:
            spec.default_resources.CopyFrom(self.resources.to_proto())
        return spec


def _task_id(upstream: Upstream, field: str) -> str:
    if isinstance(upstream, str):
        return upstream
    if isinstance(upstream, Task):
        return upstream.task_id
    declared = getattr(upstream, "task", None)
    if isinstance(declared, Task):
        return declared.task_id
    raise InvalidArgumentError(
        field, f"expected a task id, a Task or a function declared with @task, got {upstream!r}"
    )


def _struct(values: Mapping[str, Any], field: str) -> Struct:
    message = Struct()
    try:
        message.update(values)
    except (ValueError, TypeError) as error:
        raise InvalidArgumentError(field, f"expected JSON values: {error}") from None
    return message
