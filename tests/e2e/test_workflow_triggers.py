"""Runs nobody starts by hand: a partition arriving, a cron tick, a backfill of past ticks,
each run to its end by the real scheduler, provisioner and agent.

The scheduler's clock is a file the test writes (STRATA_SCHEDULER_CLOCK_FILE), so a
cron tick comes when the test moves the clock, not after a wait. The DataArrived
event is produced to Kafka as the streamer produces it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from service_processes import ServiceProcess, running

from strata.api.data.v1.data_pb2 import DataArrived
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from tests.e2e.workflow_cluster import (
    Platform,
    apply,
    pause,
    run_state,
    runs_of,
    strata,
    until,
    write_workflow,
)

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, 0, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "now"
    path.write_text(START.isoformat())
    return path


@pytest.fixture(scope="module")
async def scheduler(
    tmp_path_factory: pytest.TempPathFactory, clock: Path
) -> AsyncIterator[ServiceProcess]:
    """The module's scheduler, whose now is what ``clock`` says."""
    folder = tmp_path_factory.mktemp("scheduler")
    async with running("scheduler", folder, STRATA_SCHEDULER_CLOCK_FILE=str(clock)) as service:
        yield service


async def test_an_arrived_partition_starts_a_run_that_sees_the_partition(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    dataset = f"deliveries-{tmp_path.name[-12:]}".replace("_", "-")
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        f"""
        flow = Workflow("{{name}}", triggers=[DataArrival("{dataset}", "date=*")])


        @flow.task()
        def load(partition, **params):
            mark("load", partition)
            return {{}}
        """,
    )
    await apply(project, scheduler)
    async with Bus("e2e-streamer", kafka=load(KafkaSettings)) as bus:
        await bus.publish(
            DataArrived(dataset=dataset, partition="date=2026-03-01", checksum="sha256:aa")
        )
    [run] = await runs_of(scheduler, project.name, 1)
    await until(scheduler, run.run_id, state="SUCCEEDED")

    assert run.cause.data_arrival.partition == "date=2026-03-01"
    assert project.lines_of("load") == ["date=2026-03-01"]


async def test_a_cron_tick_starts_a_run_when_the_clock_reaches_it(
    cluster: Platform, scheduler: ServiceProcess, clock: Path, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}", triggers=[Cron("0 * * * *")])


        @flow.task()
        def report(tick, **params):
            mark("report", tick)
            return {}
        """,
    )
    await apply(project, scheduler)
    try:
        later = _advance(clock, timedelta(hours=1))
        [run] = await runs_of(scheduler, project.name, 1)
        await until(scheduler, run.run_id, state="SUCCEEDED")
    finally:
        await pause(scheduler, project.name)

    tick = later.replace(minute=0, second=0, microsecond=0)
    assert run.cause.cron_tick.ToDatetime(tzinfo=UTC) == tick
    assert project.lines_of("report") == [tick.isoformat()]


def _advance(clock: Path, by: timedelta) -> datetime:
    """Move the scheduler's clock on by ``by``; the new now."""
    later = datetime.fromisoformat(clock.read_text()) + by
    clock.write_text(later.isoformat())
    return later


async def test_a_backfill_over_three_past_ticks_makes_three_runs(
    cluster: Platform, scheduler: ServiceProcess, tmp_path: Path
) -> None:
    project = write_workflow(
        cluster.code,
        tmp_path / "marks",
        """
        flow = Workflow("{name}", triggers=[Cron("0 0 1 1 *")])


        @flow.task()
        def rebuild(tick, **params):
            mark("rebuild", tick)
            return {}
        """,
    )
    await apply(project, scheduler)
    await pause(scheduler, project.name)  # backfills run paused workflows too
    code, out, err = await strata(
        "workflow",
        "backfill",
        project.name,
        "--from",
        "2020-01-01",
        "--to",
        "2022-06-01",
        scheduler=scheduler,
        cwd=tmp_path,
    )
    assert code == 0, err
    assert f"{project.name}: 3 ticks, 3 new runs" in out
    runs = await runs_of(scheduler, project.name, 3)
    ended = [await until(scheduler, r.run_id, state="SUCCEEDED") for r in runs]

    assert [run_state(r) for r in ended] == ["SUCCEEDED"] * 3
    assert sorted(project.lines_of("rebuild")) == [
        f"{year}-01-01T00:00:00+00:00" for year in (2020, 2021, 2022)
    ]
