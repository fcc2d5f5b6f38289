"""The trigger rules: which arrived partitions a workflow watches, which cron ticks are
due (catch-up or the latest only, in the schedule's time zone), and when a lane of
runs has room."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.scheduler.domain.triggers import (
    MAX_BACKFILL_TICKS,
    MAX_TICKS_PER_ROUND,
    ArrivedPartition,
    admits,
    arrival_key,
    backfill_partitions,
    backfill_ticks,
    due_ticks,
    tick_key,
    watches,
    watching,
)

LAST = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def _at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("glob", "partition", "expected"),
    [
        ("", "anything=1", True),
        ("date=*", "date=2026-01-01", True),
        ("date=2026-01-*", "date=2026-02-01", False),
        ("date=*", "region=eu", False),
        ("date=?", "date=1", True),
    ],
)
def test_a_data_arrival_trigger_matches_its_dataset_and_partition_glob(
    glob: str, partition: str, expected: bool
) -> None:
    trigger = pb.DataArrivalTrigger(dataset="deliveries", partition_glob=glob)
    assert watches(trigger, "deliveries", partition) is expected
    assert watches(trigger, "orders", partition) is False


def test_a_workflow_watches_when_any_of_its_triggers_does() -> None:
    spec = pb.WorkflowSpec(
        triggers=[
            pb.Trigger(cron=pb.CronTrigger(expression="0 * * * *")),
            pb.Trigger(data_arrival=pb.DataArrivalTrigger(dataset="orders")),
            pb.Trigger(data_arrival=pb.DataArrivalTrigger(dataset="deliveries")),
        ]
    )
    assert watching(spec, "deliveries", "date=1")
    assert not watching(spec, "couriers", "date=1")


def test_catch_up_runs_every_tick_missed_since_the_last_one() -> None:
    trigger = pb.CronTrigger(expression="0 * * * *", catch_up=True)
    ticks, last = due_ticks(trigger, LAST, _at(3, 30))
    assert ticks == [_at(1), _at(2), _at(3)]
    assert last == _at(3)


def test_without_catch_up_only_the_latest_missed_tick_runs() -> None:
    trigger = pb.CronTrigger(expression="0 * * * *", catch_up=False)
    assert due_ticks(trigger, LAST, _at(3, 30)) == ([_at(3)], _at(3))


def test_a_tick_at_now_itself_is_due_and_the_last_tick_is_not_run_again() -> None:
    for catch_up in (True, False):
        trigger = pb.CronTrigger(expression="0 * * * *", catch_up=catch_up)
        assert due_ticks(trigger, LAST, _at(1)) == ([_at(1)], _at(1))
        assert due_ticks(trigger, _at(1), _at(1, 59)) == ([], _at(1))


def test_ticks_are_read_in_the_schedules_time_zone() -> None:
    trigger = pb.CronTrigger(expression="0 3 * * *", time_zone="Europe/Paris", catch_up=True)
    ticks, _ = due_ticks(trigger, LAST, _at(12, day=3))
    assert ticks == [_at(2), _at(2, day=2), _at(2, day=3)]  # 03:00 CET is 02:00 UTC


def test_a_long_catch_up_comes_in_rounds_without_skipping_a_tick() -> None:
    trigger = pb.CronTrigger(expression="* * * * *", catch_up=True)
    now = LAST + timedelta(minutes=MAX_TICKS_PER_ROUND + 10)
    first, last = due_ticks(trigger, LAST, now)
    rest, end = due_ticks(trigger, last, now)
    assert len(first) == MAX_TICKS_PER_ROUND
    assert first + rest == [LAST + timedelta(minutes=m) for m in range(1, MAX_TICKS_PER_ROUND + 11)]
    assert end == now


@pytest.mark.parametrize(
    ("limit", "active", "expected"), [(0, 100, True), (1, 0, True), (1, 1, False), (3, 2, True)]
)
def test_a_lane_admits_runs_below_its_limit_and_zero_means_no_limit(
    limit: int, active: int, expected: bool
) -> None:
    assert admits(limit, active) is expected


def test_trigger_keys_name_one_run_per_workflow_and_tick_or_partition_content() -> None:
    assert tick_key("w", _at(1)) == tick_key("w", _at(2).astimezone(UTC) - timedelta(hours=1))
    assert tick_key("w", _at(1)) != tick_key("v", _at(1))
    assert arrival_key("w", "d", "p=1", "sha256:a") != arrival_key("w", "d", "p=1", "sha256:b")


def _arrived(partition: str) -> ArrivedPartition:
    return ArrivedPartition("deliveries", partition, f"s3://lake/{partition}/", "sha256:a", LAST)


def _watching(glob: str) -> pb.WorkflowSpec:
    trigger = pb.DataArrivalTrigger(dataset="deliveries", partition_glob=glob)
    return pb.WorkflowSpec(name="wf", triggers=[pb.Trigger(data_arrival=trigger)])


def test_a_partition_backfill_takes_the_partitions_the_workflow_watches_in_order() -> None:
    arrived = [_arrived("date=1"), _arrived("region=eu"), _arrived("date=2")]
    chosen = backfill_partitions(_watching("date=*"), "deliveries", arrived)
    assert [p.partition for p in chosen] == ["date=1", "date=2"]
    assert chosen[0].params == {
        "dataset": "deliveries",
        "partition": "date=1",
        "uri": "s3://lake/date=1/",
        "checksum": "sha256:a",
    }


def test_a_partition_backfill_is_refused_naming_why() -> None:
    with pytest.raises(InvalidArgumentError, match="no data-arrival trigger for 'orders'"):
        backfill_partitions(_watching(""), "orders", [_arrived("date=1")])
    with pytest.raises(InvalidArgumentError, match="no partition of 'deliveries'"):
        backfill_partitions(_watching("date=*"), "deliveries", [_arrived("region=eu")])
    many = [_arrived(f"date={i}") for i in range(MAX_BACKFILL_TICKS + 1)]
    with pytest.raises(InvalidArgumentError, match="backfill it in parts"):
        backfill_partitions(_watching("date=*"), "deliveries", many)


def test_a_tick_backfill_takes_every_tick_in_the_range_both_ends_included() -> None:
    spec = pb.WorkflowSpec(
        name="wf", triggers=[pb.Trigger(cron=pb.CronTrigger(expression="0 * * * *"))]
    )
    assert backfill_ticks(spec, _at(1), _at(3)) == [_at(1), _at(2), _at(3)]
    with pytest.raises(InvalidArgumentError, match="is before from_time"):
        backfill_ticks(spec, _at(3), _at(1))
    with pytest.raises(InvalidArgumentError, match="no cron trigger"):
        backfill_ticks(_watching(""), _at(1), _at(3))
