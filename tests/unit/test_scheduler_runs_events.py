"""Task events from the provisioner and agents, read as run-domain reports. Pure."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Struct

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1 import provisioner_pb2 as prov
from strata.scheduler.domain.runs import Failed, Finished, Lost
from strata.scheduler.events import report_of

REF = TaskAttemptRef(run_id="5f0c6c1e-0000-4000-8000-000000000001", task_id="train", attempt=2)


def test_a_finished_event_carries_its_outputs_and_attempt() -> None:
    outputs = Struct()
    outputs.update({"better": True, "auc": 0.91})
    run_id, report = report_of(prov.TaskFinished(attempt=REF, node_id="n1", outputs=outputs))
    assert run_id == REF.run_id
    assert report == Finished("train", 2, node_id="n1", outputs={"better": True, "auc": 0.91})


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        (prov.FAILURE_KIND_ERROR, True),
        (prov.FAILURE_KIND_OUT_OF_MEMORY, True),
        (prov.FAILURE_KIND_TIMEOUT, True),
        (prov.FAILURE_KIND_UNSCHEDULABLE, False),
        (prov.FAILURE_KIND_CANCELLED, False),
    ],
)
def test_only_failures_a_retry_can_help_are_retryable(
    kind: prov.FailureKind.ValueType, retryable: bool
) -> None:
    _, report = report_of(prov.TaskFailed(attempt=REF, kind=kind, message="boom"))
    assert isinstance(report, Failed)
    assert report.retryable is retryable
    assert report.message.endswith(": boom")


@pytest.mark.parametrize(
    ("kind", "evicted"),
    [(prov.FAILURE_KIND_EVICTED, True), (prov.FAILURE_KIND_OUT_OF_MEMORY, False)],
)
def test_only_an_eviction_is_read_as_one(kind: prov.FailureKind.ValueType, evicted: bool) -> None:
    _, report = report_of(prov.TaskFailed(attempt=REF, kind=kind, message="pressure"))
    assert isinstance(report, Failed)
    assert report.evicted is evicted
    assert report.retryable


def test_a_lost_event_keeps_its_reason() -> None:
    _, report = report_of(prov.TaskLost(attempt=REF, node_id="n1", reason="no heartbeat"))
    assert report == Lost("train", 2, node_id="n1", reason="no heartbeat")


def test_an_event_that_is_not_a_task_report_is_refused() -> None:
    with pytest.raises(TypeError, match="TaskUsage is not a task report"):
        report_of(prov.TaskUsage(attempt=REF))
