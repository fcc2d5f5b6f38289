"""The dispatch benchmark's arithmetic: events to hops, stages and rates.

What the published figures rely on: a hop runs from the upstream's TaskFinished to
the downstream's own clock reading; its stages add up to it; only the first
REQUESTED of a task counts; a missing step is an error naming it, not a silent
zero; the peak counts the busiest one-second window; a watcher reads ``ran_ns``
and every time off a real envelope; the table's ratio pairs rounds and each aim
is judged on the right side of its bound.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from google.protobuf.struct_pb2 import Struct

from bench.dispatch.analysis import Burst, Hop, burst, chain_hops, code_to_code, timelines
from bench.dispatch.observer import Observer, Seen, _seen
from bench.dispatch.plan import Plan
from bench.dispatch.report import Report
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.provisioner.v1.provisioner_pb2 import TaskFinished
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.core.envelope import seal

MS = 1_000_000
RUN = "run-1"


def _task(task: str, start: int, ran: int) -> list[Seen]:
    """A task's events, ``start`` and ``ran`` in ms, each step 1 ms after the one before."""
    at = [n * MS for n in range(start, start + 4)]
    return [
        Seen("TaskStateChanged", RUN, task, spb.TASK_STATE_REQUESTED, at[0], 0, 0),
        Seen("TaskRequested", RUN, task, 0, 0, at[1], 0),
        Seen("TaskPlaced", RUN, task, 0, at[2], 0, 0),
        Seen("TaskStarted", RUN, task, 0, at[3], 0, 0),
        Seen("TaskStateChanged", RUN, task, spb.TASK_STATE_RUNNING, at[3], 0, 0),
        Seen("TaskFinished", RUN, task, 0, (ran + 2) * MS, (ran + 3) * MS, 0, ran_ns=ran * MS),
    ]


def test_a_hop_runs_from_upstream_finish_to_downstream_code_and_its_stages_add_up() -> None:
    events = _task("t000", 0, 10) + _task("t001", 20, 30)
    events.append(  # a later REQUESTED (a retry) does not move the first one
        Seen("TaskStateChanged", RUN, "t001", spb.TASK_STATE_REQUESTED, 99 * MS, 0, 0)
    )
    (hop,) = chain_hops(timelines(events), ["t000", "t001"])
    assert hop.seconds == pytest.approx((30 - 12) / 1000)
    assert hop.code_to_code == pytest.approx((30 - 10) / 1000)
    assert hop.stages == pytest.approx((0.001, 0.007, 0.001, 0.001, 0.001, 0.007))
    assert sum(hop.stages) == pytest.approx(hop.seconds)
    assert hop.tail == pytest.approx(0.002)


def test_a_task_missing_a_step_is_an_error_naming_the_task_and_the_step() -> None:
    events = [e for e in _task("t000", 0, 10) if e.kind != "TaskPlaced"]
    with pytest.raises(ValueError, match="task 't000': no placed event"):
        timelines(events)


def test_code_to_code_takes_consecutive_differences_in_chain_order() -> None:
    assert code_to_code([0, 5 * MS, 7 * MS]) == pytest.approx([0.005, 0.002])


def test_the_rate_spans_first_to_last_and_the_peak_is_the_busiest_second() -> None:
    second = 1_000_000_000
    times = [0, 100 * MS, 2 * second, 2 * second + 1, 2 * second + 2, 4 * second]
    measured = burst(list(reversed(times)))
    assert measured.transitions == 6
    assert measured.seconds == pytest.approx(4.0)
    assert measured.rate == pytest.approx(1.5)
    assert measured.peak == 3


def test_a_plan_without_a_hop_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"plan\.chain"):
        Plan(chain=1, fanout=1, rounds=1, burst_runs=1, burst_width=1, warmup=1, slots=1)


async def test_the_watcher_reads_an_envelope_and_wakes_on_the_end() -> None:
    outputs = Struct()
    outputs.update({"ran_ns": 1_796_000_000_123_456_000})
    finished = TaskFinished(
        attempt=TaskAttemptRef(run_id=RUN, task_id="t000", attempt=1), outputs=outputs
    )
    data = seal(finished, key=RUN, producer="test").SerializeToString()
    seen = _seen(data, timestamp_ms=5, received_ns=7)
    assert seen is not None
    assert (seen.kind, seen.run_id, seen.task_id) == ("TaskFinished", RUN, "t000")
    assert abs(seen.ran_ns - 1_796_000_000_123_456_000) < 1_000
    assert seen.record_ns == 5 * MS
    assert seen.received_ns == 7
    assert seen.occurred_ns > 0

    observer = Observer()
    ended = asyncio.ensure_future(observer.ended(RUN))
    observer.add(Seen("RunStateChanged", RUN, "", spb.RUN_STATE_RUNNING, 1, 1, 1))
    await asyncio.sleep(0)
    assert not ended.done()
    observer.add(Seen("RunStateChanged", RUN, "", spb.RUN_STATE_SUCCEEDED, 2, 2, 2))
    assert (await asyncio.wait_for(ended, 5)).state == spb.RUN_STATE_SUCCEEDED
    assert len(observer.events(RUN)) == 2


def test_the_table_pairs_rounds_for_the_ratio_and_judges_each_aim() -> None:
    hop = Hop(seconds=0.008, code_to_code=0.009, stages=(0.001,) * 6, tail=0.002)
    slow = Hop(seconds=0.060, code_to_code=0.061, stages=(0.010,) * 6, tail=0.002)
    report = Report(
        started=datetime(2026, 12, 1, tzinfo=UTC),
        seconds=1.0,
        command="python -m bench.dispatch",
        machine={"cores": "2"},
        plan=Plan(chain=2, fanout=2, rounds=2, burst_runs=1, burst_width=2, warmup=1, slots=1),
        prefect="3.9.1",
        chain=([0.4, 2.0], [1.0, 1.0]),
        fanout=([0.6, 0.6], [0.2, 0.3]),
        hops=[hop] * 98 + [slow] * 2,
        prefect_hops=[0.003, 0.003],
        burst=Burst(transitions=5_000, seconds=2.0, rate=2_500.0, peak=3_000),
        burst_seconds=2.5,
    )
    rows = report.aims_table()
    chain, fanout = rows[2], rows[3]
    assert "| 1.20 | 1.00 | 1.20 | ≤ 0.5 s: missed |" in chain  # medians; ratio 0.4 and 2.0
    assert "| 0.60 | 0.25 | 2.50 | ≤ 0.5 s: missed |" in fanout
    assert "p50 ≤ 10 ms: met; p99 ≤ 50 ms: missed" in rows[4]
    assert "| 3.00 (p50) |" in rows[5]
    assert "≥ 2,000: met" in rows[6]
