"""Apply-time validation: each way a workflow could never run is refused, naming the task."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from strata.api.common.v1.resources_pb2 import Resources
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.core.versions import next_version, spec_sha256
from strata.scheduler.domain.node_classes import GIB, NodeClass
from strata.scheduler.domain.validation import validate


def _task(task_id: str, *depends_on: str, **fields: object) -> pb.TaskSpec:
    return pb.TaskSpec(
        task_id=task_id,
        entrypoint=f"pipeline.tasks:{task_id.replace('-', '_')}",
        depends_on=depends_on,
        **fields,  # type: ignore[arg-type]
    )


def _spec(*tasks: pb.TaskSpec, **fields: object) -> pb.WorkflowSpec:
    return pb.WorkflowSpec(name="nightly", tasks=tasks, **fields)  # type: ignore[arg-type]


def _refusal(spec: pb.WorkflowSpec) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        validate(spec)
    return caught.value


def test_a_well_formed_workflow_passes() -> None:
    validate(
        _spec(
            _task("extract"),
            _task(
                "train",
                "extract",
                resources=Resources(cpu_millis=8000, memory_bytes=32 * GIB, gpus=1),
            ),
            _task("compare", "train"),
            _task(
                "deploy",
                "compare",
                condition="outputs.compare.better && outputs['extract'].rows > 0 && params.go",
            ),
            _task("cleanup", "deploy", trigger_rule=pb.TRIGGER_RULE_ALL_DONE),
            triggers=[
                pb.Trigger(cron=pb.CronTrigger(expression="0 3 * * 1-5", time_zone="Europe/Paris")),
                pb.Trigger(data_arrival=pb.DataArrivalTrigger(dataset="deliveries")),
            ],
        )
    )


def test_a_cycle_is_refused_naming_its_tasks() -> None:
    error = _refusal(_spec(_task("a", "c"), _task("b", "a"), _task("c", "b"), _task("d")))
    assert error.field in {"tasks[a].depends_on", "tasks[b].depends_on", "tasks[c].depends_on"}
    assert "cycle" in error.message
    assert all(name in error.message for name in ("a", "b", "c"))


def test_a_task_depending_on_itself_is_refused() -> None:
    error = _refusal(_spec(_task("a", "a")))
    assert error.field == "tasks[a].depends_on"


def test_an_unknown_dependency_is_refused() -> None:
    error = _refusal(_spec(_task("extract"), _task("train", "extrct")))
    assert error.field == "tasks[train].depends_on"
    assert "'extrct'" in error.message


def test_a_condition_that_does_not_compile_is_refused() -> None:
    error = _refusal(_spec(_task("a"), _task("b", "a", condition="outputs.a.ok &&")))
    assert error.field == "tasks[b].condition"
    assert "CEL" in error.message


def test_a_condition_naming_a_task_that_is_not_upstream_is_refused() -> None:
    """``c`` exists but runs in parallel with ``b``: its outputs are never there in time."""
    error = _refusal(_spec(_task("a"), _task("b", "a", condition="outputs.c.ok"), _task("c", "a")))
    assert error.field == "tasks[b].condition"
    assert "'c'" in error.message


def test_a_condition_may_read_an_indirect_upstream_task() -> None:
    validate(_spec(_task("a"), _task("b", "a"), _task("c", "b", condition="outputs['a'].rows > 0")))


def test_a_bad_cron_expression_is_refused() -> None:
    trigger = pb.Trigger(cron=pb.CronTrigger(expression="61 3 * * *"))
    error = _refusal(_spec(_task("a"), triggers=[trigger]))
    assert error.field == "triggers[0].cron.expression"


def test_a_cron_expression_without_five_fields_is_refused() -> None:
    trigger = pb.Trigger(cron=pb.CronTrigger(expression="0 3 * *"))
    error = _refusal(_spec(_task("a"), triggers=[trigger]))
    assert error.field == "triggers[0].cron.expression"


def test_an_unknown_time_zone_is_refused() -> None:
    trigger = pb.Trigger(cron=pb.CronTrigger(expression="0 3 * * *", time_zone="Europe/Pariss"))
    error = _refusal(_spec(_task("a"), triggers=[trigger]))
    assert error.field == "triggers[0].cron.time_zone"


def test_memory_no_node_class_holds_is_refused() -> None:
    error = _refusal(_spec(_task("train", resources=Resources(memory_bytes=64 * GIB))))
    assert error.field == "tasks[train].resources.memory_bytes"
    assert "more than any node class" in error.message


def test_cpu_no_node_class_holds_is_refused() -> None:
    error = _refusal(_spec(_task("train", resources=Resources(cpu_millis=16_000))))
    assert error.field == "tasks[train].resources.cpu_millis"


def test_gpus_no_node_class_holds_are_refused() -> None:
    error = _refusal(_spec(_task("train", resources=Resources(gpus=2))))
    assert error.field == "tasks[train].resources.gpus"


def test_an_oversized_default_is_refused_for_the_task_that_inherits_it() -> None:
    spec = _spec(
        _task("a", resources=Resources(cpu_millis=1000)),
        _task("b"),
        default_resources=Resources(memory_bytes=33 * GIB),
    )
    error = _refusal(spec)
    assert error.field == "tasks[b].resources (from default_resources).memory_bytes"


def test_a_bad_entrypoint_is_refused() -> None:
    error = _refusal(_spec(pb.TaskSpec(task_id="a", entrypoint="pipeline.tasks.extract")))
    assert error.field == "tasks[a].entrypoint"


def test_a_task_id_declared_twice_is_refused() -> None:
    error = _refusal(_spec(_task("a"), _task("a")))
    assert error.field == "tasks[a].task_id"


@pytest.mark.parametrize("name", ["", "Nightly", "night_ly", "-nightly", "n" * 64])
def test_a_bad_workflow_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate(pb.WorkflowSpec(name=name, tasks=[_task("a")]))
    assert caught.value.field == "name"


def test_a_workflow_without_tasks_is_refused() -> None:
    assert _refusal(_spec()).field == "tasks"


def test_a_retry_whose_cap_is_below_its_first_wait_is_refused() -> None:
    retry = pb.RetryPolicy(
        max_attempts=3, initial_backoff=Duration(seconds=60), max_backoff=Duration(seconds=1)
    )
    error = _refusal(_spec(_task("a", retry=retry)))
    assert error.field == "tasks[a].retry.max_backoff"


def test_a_timeout_that_is_not_positive_is_refused() -> None:
    timeout = Duration()
    timeout.FromTimedelta(timedelta(0))
    error = _refusal(_spec(_task("a", timeout=timeout)))
    assert error.field == "tasks[a].timeout"


def test_an_identical_spec_keeps_its_version_and_a_changed_one_gets_the_next() -> None:
    spec = _spec(_task("a"))
    same = _spec(_task("a"))
    changed = _spec(_task("a"), _task("b", "a"))
    assert spec_sha256(spec) == spec_sha256(same)
    assert spec_sha256(spec) != spec_sha256(changed)
    assert next_version(None, None, spec_sha256(spec)).version == 1
    assert not next_version(3, spec_sha256(spec), spec_sha256(same)).changed
    assert next_version(3, spec_sha256(spec), spec_sha256(same)).version == 3
    assert next_version(3, spec_sha256(spec), spec_sha256(changed)).version == 4


def test_a_request_no_single_node_class_holds_at_once_is_refused() -> None:
    """Each dimension fits some class, but no class has both the CPU and the memory."""
    classes = (
        NodeClass("wide", cpu_millis=16_000, memory_bytes=8 * GIB, gpus=0),
        NodeClass("tall", cpu_millis=2_000, memory_bytes=64 * GIB, gpus=0),
    )
    spec = _spec(_task("train", resources=Resources(cpu_millis=16_000, memory_bytes=64 * GIB)))
    with pytest.raises(InvalidArgumentError) as caught:
        validate(spec, classes)
    assert caught.value.field == "tasks[train].resources"
    assert "no node class holds" in caught.value.message
    validate(_spec(_task("train", resources=Resources(cpu_millis=16_000))), classes)
