"""The agent's decisions without I/O: entrypoints, call arguments, backoff, reports."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from strata.agent.attempts import report
from strata.agent.domain.backoff import reconnect_delay
from strata.agent.domain.entrypoint import Entrypoint, call_arguments
from strata.agent.domain.outcome import Failed, Finished, Usage
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.core.errors import InvalidArgumentError


def test_an_entrypoint_names_a_module_and_a_function() -> None:
    assert Entrypoint.parse("pipeline.tasks:train") == Entrypoint("pipeline.tasks", "train")
    assert Entrypoint.parse("tasks:Model.fit").function == "Model.fit"


@pytest.mark.parametrize("text", ["pipeline.tasks", "tasks:", ":train", "a-b:c", "tasks:class"])
def test_a_malformed_entrypoint_is_refused_naming_it(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        Entrypoint.parse(text)
    assert refused.value.field == "entrypoint"
    assert repr(text) in str(refused.value)


def _signature(function: Any) -> inspect.Signature:
    return inspect.signature(function)


def test_upstream_outputs_go_to_the_parameter_named_after_the_task() -> None:
    def train(extract_rows: dict[str, Any], scale: int) -> None: ...

    arguments = call_arguments(
        _signature(train), {"scale": 2}, {"extract-rows": {"rows": 3}, "other": {"x": 1}}
    )
    assert arguments == {"scale": 2, "extract_rows": {"rows": 3}}


def test_a_function_taking_any_keyword_gets_every_upstream() -> None:
    def report(**inputs: Any) -> None: ...

    arguments = call_arguments(_signature(report), {}, {"a": {"x": 1}, "b": {"y": 2}})
    assert arguments == {"a": {"x": 1}, "b": {"y": 2}}


def test_an_arg_wins_over_an_upstream_of_the_same_name() -> None:
    def train(extract: Any) -> None: ...

    assert call_arguments(_signature(train), {"extract": 1}, {"extract": {"x": 1}}) == {
        "extract": 1
    }


@pytest.mark.parametrize("failures", [1, 2, 5, 40])
def test_reconnect_backoff_grows_up_to_its_ceiling(failures: int) -> None:
    bound = min(10.0, 0.5 * 2 ** (failures - 1))
    for _ in range(50):
        delay = reconnect_delay(failures, 0.5, 10.0)
        assert bound / 2 <= delay <= bound


def test_reconnect_backoff_refuses_zero_failures() -> None:
    with pytest.raises(ValueError, match="failures"):
        reconnect_delay(0, 0.5, 10.0)


def test_average_cpu_is_cpu_seconds_over_wall_time() -> None:
    assert Usage(1, cpu_seconds=1.0, wall_seconds=2.0).average_cpu_millis == 500
    assert Usage(1, cpu_seconds=1.0, wall_seconds=0.0).average_cpu_millis == 0


REF = TaskAttemptRef(run_id="r", task_id="t", attempt=2)


def test_a_finished_attempt_is_reported_with_outputs_usage_and_duration() -> None:
    outcome = Finished({"rows": 3, "ok": True}, Usage(2048, 0.5, 1.0, mean_rss_bytes=1024))
    message = report(REF, "node-a", outcome)
    finished = message.task_finished
    assert finished.attempt == REF
    assert finished.node_id == "node-a"
    assert dict(finished.outputs) == {"rows": 3, "ok": True}
    assert finished.peak_usage.memory_bytes == 2048
    assert finished.peak_usage.cpu_millis == 500
    assert finished.mean_memory_bytes == 1024
    assert finished.duration.ToNanoseconds() == 1_000_000_000


def test_a_failed_attempt_is_reported_with_one_line_and_its_traceback() -> None:
    outcome = Failed("ValueError", "column 'eta' missing\nmore", "Traceback ...", Usage(1, 0, 1, 7))
    failed = report(REF, "node-a", outcome).task_failed
    assert failed.kind == pb.FAILURE_KIND_ERROR
    assert failed.mean_memory_bytes == 7
    assert failed.message == "ValueError: column 'eta' missing"
    assert failed.traceback == "Traceback ..."
    assert Failed("KeyError", "", "", Usage(0, 0, 0)).summary == "KeyError"
