"""What ``strata workflow run|backfill`` make of their options, before any call. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import json_format

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.sdk.client import CommandError
from strata.sdk.workflows.commands import _attempt, _params, _Row, _timestamp


def test_run_parameters_are_typed_when_they_are_json_and_strings_otherwise() -> None:
    params = _params(["epochs=3", "rate=0.5", "full=true", "date=2026-01-01", "note=a=b"])
    assert json_format.MessageToDict(params) == {
        "epochs": 3,
        "rate": 0.5,
        "full": True,
        "date": "2026-01-01",
        "note": "a=b",
    }


@pytest.mark.parametrize("pair", ["epochs", "=3"])
def test_a_parameter_without_key_or_equals_names_the_option(pair: str) -> None:
    with pytest.raises(CommandError, match=f"--param '{pair}': expected key=value"):
        _params([pair])


def test_a_backfill_time_without_offset_is_utc() -> None:
    assert _timestamp("2026-01-01", "--from").ToDatetime(tzinfo=UTC) == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    paris = _timestamp("2026-01-01T03:00+01:00", "--to").ToDatetime(tzinfo=UTC)
    assert paris == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


def test_a_time_that_is_not_iso_names_the_option() -> None:
    with pytest.raises(CommandError, match="--to 'tomorrow': expected an ISO 8601 time"):
        _timestamp("tomorrow", "--to")


def test_a_task_evicted_or_lost_shows_how_often_beside_its_attempt() -> None:
    evicted = pb.TaskInstance(task_id="train", attempt=3, evictions=2)
    assert _attempt(_Row.of(evicted)) == "3 (2 evicted)"
    assert _attempt(_Row.of(pb.TaskInstance(task_id="train", attempt=1))) == "1"
    both = pb.TaskInstance(task_id="train", attempt=4, evictions=1, losses=2)
    assert _attempt(_Row.of(both)) == "4 (1 evicted, 2 lost)"
