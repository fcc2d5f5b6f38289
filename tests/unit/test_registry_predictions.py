"""The registry's prediction records and lineage assembly, without I/O.

What a reader of a lineage relies on: the record keeps everything the gateway
logged, stamped with the log event's time; the attempts of a lineage get node,
state and duration only from the scheduler's matching attempt (never from a later
attempt of the same task, nor from another run); ids and page tokens that are not
ours are refused naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from strata.api.common.v1.refs_pb2 import FeatureViewRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources, ResourceUsage
from strata.api.features.v1 import features_pb2 as fpb
from strata.api.gateway.v1.gateway_pb2 import PredictionLogged
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.core.errors import InvalidArgumentError, NotFoundError
from strata.registry.domain.predictions import (
    PredictionNotFoundError,
    attempts,
    check_prediction_id,
    page_position,
    page_token,
    record_of,
)

SERVED = datetime(2026, 12, 1, 5, 0, 1, 250000, tzinfo=UTC)

GIB = 2**30
MIB = 2**20


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_a_record_keeps_what_was_logged_and_when_it_was_served() -> None:
    logged = PredictionLogged(
        prediction_id="0b7c0c8e-5a43-4f55-9d4e-8a1f8d7a2f10",
        request_id="r1",
        entity_key="courier_id=4",
        model_name="eta",
        model_version=3,
        alias="champion",
        features={"couriers:minutes": fpb.FeatureValue(value=fpb.Value(double_value=2.5))},
        feature_views=[FeatureViewRef(name="couriers", version=2)],
        outputs={"variable": fpb.Value(double_value=9.0)},
    )

    record = record_of(logged, _stamp(SERVED))

    assert record.served_at.ToDatetime(tzinfo=UTC) == SERVED
    assert (record.model_name, record.model_version, record.alias) == ("eta", 3, "champion")
    assert record.features["couriers:minutes"].value.double_value == 2.5
    assert record.outputs["variable"].double_value == 9.0
    assert list(record.feature_views) == [FeatureViewRef(name="couriers", version=2)]
    assert (record.prediction_id, record.request_id, record.entity_key) == (
        logged.prediction_id,
        "r1",
        "courier_id=4",
    )


def test_attempts_take_node_and_times_from_the_same_attempt_of_the_same_run() -> None:
    started = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    lineage = pb.Lineage(
        training_run_id="run-1",
        task_attempts=[
            TaskAttemptRef(run_id="run-1", task_id="train", attempt=2),
            TaskAttemptRef(run_id="run-1", task_id="evaluate", attempt=1),
            TaskAttemptRef(run_id="run-0", task_id="features", attempt=1),
        ],
    )
    run = spb.Run(
        run_id="run-1",
        tasks=[
            spb.TaskInstance(
                task_id="train",
                attempt=2,
                node_id="node-a",
                state=spb.TASK_STATE_SUCCEEDED,
                started_at=_stamp(started),
                finished_at=_stamp(started + timedelta(seconds=42)),
                requested=Resources(cpu_millis=2000, memory_bytes=4 * GIB),
                reserved=Resources(cpu_millis=600, memory_bytes=GIB),
                peak_usage=ResourceUsage(cpu_millis=450, memory_bytes=800 * MIB),
            ),
            spb.TaskInstance(
                task_id="evaluate",
                attempt=2,
                node_id="node-b",
                peak_usage=ResourceUsage(memory_bytes=GIB),
            ),
        ],
    )

    train, evaluate, features = attempts(lineage, run)

    assert (train.node_id, train.state) == ("node-a", "SUCCEEDED")
    assert train.duration.ToTimedelta() == timedelta(seconds=42)
    assert train.requested == Resources(cpu_millis=2000, memory_bytes=4 * GIB)
    assert train.reserved == Resources(cpu_millis=600, memory_bytes=GIB)
    assert train.peak_usage == ResourceUsage(cpu_millis=450, memory_bytes=800 * MIB)
    assert evaluate.node_id == ""  # a later attempt ran on node-b, not this one
    assert not evaluate.HasField("peak_usage")  # nor is its usage this one's
    assert features.node_id == ""  # another run
    assert [a.attempt for a in (train, evaluate, features)] == list(lineage.task_attempts)


def test_without_the_run_the_attempts_keep_their_references() -> None:
    ref = TaskAttemptRef(run_id="run-1", task_id="train", attempt=1)

    [attempt] = attempts(pb.Lineage(task_attempts=[ref]), None)

    assert attempt.attempt == ref
    assert not attempt.node_id
    assert not attempt.HasField("duration")


def test_a_page_token_returns_the_position_it_was_made_at() -> None:
    last = pb.PredictionRecord(
        prediction_id="0b7c0c8e-5a43-4f55-9d4e-8a1f8d7a2f10", served_at=_stamp(SERVED)
    )

    assert page_position(page_token(last)) == (SERVED, last.prediction_id)
    assert page_position("") is None


@pytest.mark.parametrize(
    "token", ["bm90LWEtdG9rZW4=", "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHxub3QtYS11dWlk"]
)
def test_a_foreign_page_token_is_refused_naming_the_field(token: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        page_position(token)
    assert caught.value.field == "page_token"


def test_prediction_ids_are_uuids_and_an_unknown_one_may_be_on_its_way() -> None:
    assert check_prediction_id("0B7C0C8E5A434F559D4E8A1F8D7A2F10") == (
        "0b7c0c8e-5a43-4f55-9d4e-8a1f8d7a2f10"
    )
    with pytest.raises(InvalidArgumentError) as caught:
        check_prediction_id("p-1")
    assert caught.value.field == "prediction_id"

    error = PredictionNotFoundError("0b7c0c8e-5a43-4f55-9d4e-8a1f8d7a2f10")
    assert isinstance(error, NotFoundError)
    assert "0b7c0c8e-5a43-4f55-9d4e-8a1f8d7a2f10" in str(error)
    assert "on its way" in str(error)
