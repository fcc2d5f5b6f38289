"""The workflow DSL: what a user declares in Python is what the scheduler receives."""

from __future__ import annotations

from datetime import timedelta

import pytest

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.sdk.workflows import Cron, DataArrival, Resources, Retry, TriggerRule, Workflow


def _noop() -> None:
    """A task body; declaring it under several ids is fine for these tests."""


def extract_rows() -> dict[str, int]:
    return {"rows": 3}


def train() -> None: ...


def cleanup() -> None: ...


def _daily() -> Workflow:
    daily = Workflow(
        "daily-train",
        description="retrain every night",
        triggers=[
            Cron("0 3 * * *", "Europe/Paris", catch_up=True),
            DataArrival("deliveries", "date=*"),
        ],
        retry=Retry(attempts=2),
        cpu="500m",
        memory="1Gi",
        priority=5,
        queue="training",
        max_active_runs=1,
        params={"region": "eu"},
    )

    daily.task(memory="4Gi", cpu=2, retry=Retry(attempts=3, backoff=timedelta(seconds=10)))(
        extract_rows
    )
    daily.task(
        depends_on=[extract_rows],
        condition="outputs['extract-rows'].rows > 0",
        timeout=timedelta(minutes=30),
        args={"epochs": 3},
    )(train)
    daily.task(depends_on=["extract-rows", train], trigger_rule=TriggerRule.ALL_DONE, gpu=1)(
        cleanup
    )
    return daily


def test_a_declared_workflow_compiles_to_the_spec_the_scheduler_stores() -> None:
    spec = _daily().to_spec()

    assert spec.name == "daily-train"
    assert [t.task_id for t in spec.tasks] == ["extract-rows", "train", "cleanup"]
    extract, train, cleanup = spec.tasks
    assert extract.entrypoint == f"{__name__}:extract_rows"
    assert (extract.resources.cpu_millis, extract.resources.memory_bytes) == (2000, 4 * 2**30)
    assert extract.retry.max_attempts == 3
    assert extract.retry.initial_backoff.ToTimedelta() == timedelta(seconds=10)
    assert list(train.depends_on) == ["extract-rows"]
    assert train.condition == "outputs['extract-rows'].rows > 0"
    assert train.timeout.ToTimedelta() == timedelta(minutes=30)
    assert dict(train.args) == {"epochs": 3}
    assert not train.HasField("resources"), "unset resources fall back to the workflow's"
    assert list(cleanup.depends_on) == ["extract-rows", "train"]
    assert cleanup.trigger_rule == pb.TRIGGER_RULE_ALL_DONE
    assert cleanup.resources.gpus == 1
    assert spec.triggers[0].cron == pb.CronTrigger(
        expression="0 3 * * *", time_zone="Europe/Paris", catch_up=True
    )
    assert spec.triggers[1].data_arrival == pb.DataArrivalTrigger(
        dataset="deliveries", partition_glob="date=*"
    )
    assert (spec.default_resources.cpu_millis, spec.default_resources.memory_bytes) == (500, 2**30)
    assert spec.default_retry.max_attempts == 2
    assert (spec.priority, spec.queue, spec.max_active_runs) == (5, "training", 1)
    assert dict(spec.default_params) == {"region": "eu"}


def test_the_same_declaration_compiles_to_the_same_bytes() -> None:
    """The scheduler recognises an unchanged apply by the spec's hash."""
    first = _daily().to_spec().SerializeToString(deterministic=True)
    assert _daily().to_spec().SerializeToString(deterministic=True) == first


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"cpu": 2}, (2000, 0, 0)),
        ({"cpu": 0.5}, (500, 0, 0)),
        ({"cpu": "250m"}, (250, 0, 0)),
        ({"memory": "4Gi"}, (0, 4 * 2**30, 0)),
        ({"memory": "512Mi"}, (0, 512 * 2**20, 0)),
        ({"memory": "1G"}, (0, 10**9, 0)),
        ({"memory": "1.5Gi"}, (0, 3 * 2**29, 0)),
        ({"memory": 1024}, (0, 1024, 0)),
        ({"gpu": 0}, (0, 0, 0)),
        ({"gpu": 2}, (0, 0, 2)),
    ],
)
def test_resources_parse_the_kubernetes_spellings(
    kwargs: dict[str, object], expected: tuple[int, int, int]
) -> None:
    parsed = Resources.parse(**kwargs)  # type: ignore[arg-type]
    assert (parsed.cpu_millis, parsed.memory_bytes, parsed.gpus) == expected


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory": "4GB"}, "tasks[t].resources.memory"),
        ({"memory": "lots"}, "tasks[t].resources.memory"),
        ({"memory": -1}, "tasks[t].resources.memory"),
        ({"memory": "0.5"}, "tasks[t].resources.memory"),
        ({"cpu": "two"}, "tasks[t].resources.cpu"),
        ({"cpu": 0}, "tasks[t].resources.cpu"),
        ({"cpu": "0.1m"}, "tasks[t].resources.cpu"),
        ({"gpu": -1}, "tasks[t].resources.gpu"),
        ({"gpu": 0.5}, "tasks[t].resources.gpu"),
    ],
)
def test_a_bad_resource_request_names_its_field(kwargs: dict[str, object], field: str) -> None:
    workflow = Workflow("w")
    with pytest.raises(InvalidArgumentError) as caught:
        workflow.task(task_id="t", **kwargs)(_noop)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert "expected" in caught.value.message


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        (Cron("0 3 * *"), "triggers[0].expression"),
        (Cron("61 * * * *"), "triggers[0].expression"),
        (Cron("0 3 * * *", "Mars/Olympus"), "triggers[0].time_zone"),
        (DataArrival(""), "triggers[0].dataset"),
    ],
)
def test_a_bad_trigger_is_refused_at_declaration(trigger: Cron | DataArrival, field: str) -> None:
    workflow = Workflow("w", triggers=[trigger])
    workflow.task()(_noop)
    with pytest.raises(InvalidArgumentError) as caught:
        workflow.to_spec()
    assert caught.value.field == field


def test_a_condition_that_is_not_cel_is_refused_naming_the_task() -> None:
    workflow = Workflow("w")
    workflow.task(task_id="a")(_noop)
    workflow.task(task_id="b", depends_on=["a"], condition="outputs.a.ok &&")(_noop)
    with pytest.raises(InvalidArgumentError) as caught:
        workflow.to_spec()
    assert caught.value.field == "tasks[b].condition"
    assert "CEL" in caught.value.message


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        (Retry(attempts=0), "tasks[t].retry.attempts"),
        (Retry(multiplier=0.5), "tasks[t].retry.multiplier"),
        (Retry(backoff=timedelta(seconds=-1)), "tasks[t].retry.backoff"),
        (
            Retry(backoff=timedelta(minutes=5), max_backoff=timedelta(minutes=1)),
            "tasks[t].retry.max_backoff",
        ),
    ],
)
def test_a_nonsensical_retry_policy_names_its_field(retry: Retry, field: str) -> None:
    workflow = Workflow("w")
    workflow.task(task_id="t", retry=retry)(_noop)
    with pytest.raises(InvalidArgumentError) as caught:
        workflow.to_spec()
    assert caught.value.field == field


def test_a_task_declared_twice_is_refused() -> None:
    workflow = Workflow("w")
    workflow.task(task_id="t")(_noop)
    with pytest.raises(InvalidArgumentError, match="already has a task 't'"):
        workflow.task(task_id="t")(_noop)


def test_a_workflow_without_tasks_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Workflow("w").to_spec()
    assert caught.value.field == "tasks"


def test_a_nested_function_is_refused_since_no_agent_could_import_it() -> None:
    def nested() -> None: ...

    with pytest.raises(InvalidArgumentError) as caught:
        Workflow("w").task()(nested)
    assert caught.value.field == "tasks[nested].entrypoint"
