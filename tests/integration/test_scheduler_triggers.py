"""Triggers on a real ``python -m strata.scheduler``, over the real Kafka and Postgres.

What a team relies on: a partition arriving starts one run of each workflow watching
it (never two, however often the event comes); data nobody watches is counted and
starts nothing; a malformed DataArrived is dead-lettered with the reason;
``max_active_runs`` holds further runs QUEUED and starts them in creation order;
cron ticks start runs in the schedule's time zone, all missed ones with catch-up or
the latest without, and a restarted scheduler neither repeats nor skips one. The
scheduler's clock is a file the test writes (STRATA_SCHEDULER_CLOCK_FILE): no test
waits for a tick.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf import json_format
from scheduler_peer import DEV, TOKENS, Cluster, Scheduler, playing_cluster, scheduler_client
from service_processes import running

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.settings import KafkaSettings, load
from strata.core.topics import DATA_ARRIVED, dead_letter_topic

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
UNWATCHED = "strata_scheduler_unwatched_arrivals_total"
START = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def _set_clock(path: Path, moment: datetime) -> None:
    path.write_text(moment.isoformat())


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "now"
    _set_clock(path, START)
    return path


def _env(clock_file: Path) -> dict[str, str]:
    return {
        "STRATA_AUTH_TOKENS": json.dumps(TOKENS),
        "STRATA_SCHEDULER_CLOCK_FILE": str(clock_file),
    }


@pytest.fixture(scope="module")
async def scheduler(
    tmp_path_factory: pytest.TempPathFactory, clock_file: Path
) -> AsyncIterator[Scheduler]:
    folder = tmp_path_factory.mktemp("scheduler-triggers")
    async with running("scheduler", folder, **_env(clock_file)) as service:
        yield Scheduler(service.address, service.metrics_port)


@pytest.fixture
async def client(scheduler: Scheduler) -> AsyncIterator[SchedulerServiceStub]:
    async with scheduler_client(scheduler.address) as stub:
        yield stub


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with playing_cluster("triggers-test") as cluster:
        yield cluster


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _spec(name: str, *triggers: pb.Trigger, max_active_runs: int = 0) -> pb.WorkflowSpec:
    return pb.WorkflowSpec(
        name=name,
        tasks=[pb.TaskSpec(task_id="train", entrypoint="pipeline.tasks:train")],
        triggers=triggers,
        max_active_runs=max_active_runs,
    )


def _arrival(dataset: str, glob: str = "") -> pb.Trigger:
    return pb.Trigger(data_arrival=pb.DataArrivalTrigger(dataset=dataset, partition_glob=glob))


def _cron(expression: str, *, catch_up: bool, time_zone: str = "") -> pb.Trigger:
    return pb.Trigger(
        cron=pb.CronTrigger(expression=expression, time_zone=time_zone, catch_up=catch_up)
    )


async def _apply(client: SchedulerServiceStub, spec: pb.WorkflowSpec) -> None:
    await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec), metadata=DEV)


async def _runs(client: SchedulerServiceStub, workflow: str) -> list[pb.Run]:
    """The workflow's runs (newest first, as listed)."""
    reply = await client.ListRuns(pb.ListRunsRequest(workflow_name=workflow), metadata=DEV)
    return list(reply.runs)


async def _until_runs(client: SchedulerServiceStub, workflow: str, count: int) -> list[pb.Run]:
    async with asyncio.timeout(BOUND):
        while True:
            runs = await _runs(client, workflow)
            if len(runs) >= count:
                return runs
            await asyncio.sleep(0.1)


async def _until_state(
    client: SchedulerServiceStub, run_id: str, state: pb.RunState.ValueType
) -> pb.Run:
    async with asyncio.timeout(BOUND):
        while True:
            run: pb.Run = (await client.GetRun(pb.GetRunRequest(run_id=run_id), metadata=DEV)).run
            if run.state == state:
                return run
            await asyncio.sleep(0.1)


async def test_arrived_data_starts_one_run_of_each_workflow_watching_it(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    dataset = _name("deliveries")
    daily, regional, other = _name("daily"), _name("regional"), _name("other")
    await _apply(client, _spec(daily, _arrival(dataset, "date=*")))
    await _apply(client, _spec(regional, _arrival(dataset, "region=*")))
    await _apply(client, _spec(other, _arrival(_name("elsewhere"))))
    first = DataArrived(
        dataset=dataset,
        partition="date=2026-01-01",
        uri=f"s3://lake/{dataset}/date=2026-01-01/",
        checksum="sha256:aa",
    )
    sent = await cluster.bus.publish(first)

    [run] = await _until_runs(client, daily, 1)
    assert run.cause.data_arrival.dataset == dataset
    assert run.cause.data_arrival.partition == "date=2026-01-01"
    assert json_format.MessageToDict(run.params) == {
        "dataset": dataset,
        "partition": "date=2026-01-01",
        "uri": f"s3://lake/{dataset}/date=2026-01-01/",
        "checksum": "sha256:aa",
    }
    request = await cluster.next_request(run.run_id)
    assert json_format.MessageToDict(request.args)["partition"] == "date=2026-01-01"

    # The same event delivered again, and the same partition announced again: no run.
    await cluster.bus.publish(first, event_id=sent.event_id)
    await cluster.bus.publish(first)
    # A later partition of the same dataset (same key, so read after them) does run:
    # once its run shows, the two repeats before it were handled.
    await cluster.bus.publish(
        DataArrived(dataset=dataset, partition="date=2026-01-02", checksum="sha256:bb")
    )
    runs = await _until_runs(client, daily, 2)
    assert sorted(r.cause.data_arrival.partition for r in runs) == [
        "date=2026-01-01",
        "date=2026-01-02",
    ]
    assert await _runs(client, regional) == []
    assert await _runs(client, other) == []


async def test_data_no_workflow_watches_is_counted_and_starts_nothing(
    client: SchedulerServiceStub, cluster: Cluster, scheduler: Scheduler
) -> None:
    watched = _name("watched")
    await _apply(client, _spec(watched, _arrival(_name("watched-set"))))
    before = await asyncio.to_thread(scheduler.sample, UNWATCHED)
    await cluster.bus.publish(DataArrived(dataset=_name("nobody"), partition="date=1"))
    async with asyncio.timeout(BOUND):
        while True:
            if await asyncio.to_thread(scheduler.sample, UNWATCHED) > before:
                break
            await asyncio.sleep(0.1)
    assert await _runs(client, watched) == []


async def test_a_data_arrived_without_a_partition_is_dead_lettered_with_the_reason(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    dataset = _name("broken")
    await _apply(client, _spec(_name("broken-watcher"), _arrival(dataset)))
    sent = await cluster.bus.publish(DataArrived(dataset=dataset))
    letter = await _dead_letter(dead_letter_topic(DATA_ARRIVED.name), sent.event_id)
    assert letter.cause == DeadLetter.CAUSE_REJECTED
    assert "partition" in letter.reason
    assert dataset in letter.reason


async def _dead_letter(topic: str, event_id: str) -> DeadLetter:
    """The dead letter of ``event_id`` on the one-partition ``topic``, once it is there."""
    reader = AIOKafkaConsumer(bootstrap_servers=load(KafkaSettings).bootstrap)
    await reader.start()
    try:
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        await reader.seek_to_beginning(partition)
        async with asyncio.timeout(BOUND):
            while True:
                record = await reader.getone()
                letter = DeadLetter.FromString(record.value)
                if letter.event_id == event_id:
                    return letter
    finally:
        await reader.stop()


async def test_runs_over_max_active_runs_wait_queued_and_start_in_creation_order(
    client: SchedulerServiceStub, cluster: Cluster
) -> None:
    name = _name("one-at-a-time")
    await _apply(client, _spec(name, max_active_runs=1))
    runs = []
    for _ in range(3):
        reply = await client.TriggerRun(pb.TriggerRunRequest(workflow_name=name), metadata=DEV)
        runs.append(reply.run)
    assert [r.state for r in runs] == [
        pb.RUN_STATE_RUNNING,
        pb.RUN_STATE_QUEUED,
        pb.RUN_STATE_QUEUED,
    ]
    assert runs[1].HasField("started_at") is False

    for index, run in enumerate(runs):
        request = await cluster.next_request(run.run_id)
        later = [
            (await client.GetRun(pb.GetRunRequest(run_id=r.run_id), metadata=DEV)).run.state
            for r in runs[index + 1 :]
        ]
        assert later == [pb.RUN_STATE_QUEUED] * len(later)
        await cluster.start(request.attempt)
        await cluster.finish(request.attempt)
        await _until_state(client, run.run_id, pb.RUN_STATE_SUCCEEDED)


async def test_cron_ticks_start_runs_with_catch_up_and_survive_a_restart(tmp_path: Path) -> None:
    hourly_cron = _cron("0 * * * *", catch_up=True)
    hourly = _spec(_name("hourly"), hourly_cron)
    latest_only = _spec(_name("latest-only"), _cron("0 * * * *", catch_up=False))
    # 03:00 in Paris is 02:00 UTC in winter.
    paris = _spec(_name("paris"), _cron("0 3 * * *", catch_up=True, time_zone="Europe/Paris"))
    # A round of the cron loop takes workflows by name, so this one's ticks are
    # settled in a round before the others' runs of that round show.
    paused = _spec(f"a-{_name('paused')}", hourly_cron)
    specs = (hourly, latest_only, paris, paused)
    clock = tmp_path / "now"
    _set_clock(clock, START)
    async with (
        running("scheduler", tmp_path, **_env(clock)) as service,
        grpc.aio.insecure_channel(service.address) as channel,
    ):
        client = SchedulerServiceStub(channel)
        try:
            for spec in specs:
                await client.ApplyWorkflow(
                    pb.ApplyWorkflowRequest(spec=spec, paused=spec is paused), metadata=DEV
                )
            _set_clock(clock, START + timedelta(hours=3))  # 03:30: ticks 01:00, 02:00, 03:00
            hourly_runs = await _until_runs(client, hourly.name, 3)
            [latest] = await _until_runs(client, latest_only.name, 1)
            [in_paris] = await _until_runs(client, paris.name, 1)
            assert await _runs(client, paused.name) == []
            await _apply(client, paused)  # unpaused
        except BaseException:
            await _pause(client, specs)
            raise

    assert _ticks(hourly_runs) == ["01:00", "02:00", "03:00"]
    assert _tick(latest) == "03:00"
    assert in_paris.cause.cron_tick.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)

    _set_clock(clock, START + timedelta(hours=5))  # 05:30 while down: 04:00 and 05:00 missed
    async with (
        running("scheduler", tmp_path, **_env(clock)) as service,
        grpc.aio.insecure_channel(service.address) as channel,
    ):
        client = SchedulerServiceStub(channel)
        try:
            hourly_runs = await _until_runs(client, hourly.name, 5)
            latest_runs = await _until_runs(client, latest_only.name, 2)
            _set_clock(clock, START + timedelta(hours=6))  # 06:30: one more tick each
            hourly_runs = await _until_runs(client, hourly.name, 6)
            latest_runs = await _until_runs(client, latest_only.name, 3)
            unpaused_runs = await _until_runs(client, paused.name, 3)
        finally:
            await _pause(client, specs)

    assert _ticks(hourly_runs) == ["01:00", "02:00", "03:00", "04:00", "05:00", "06:00"]
    assert _ticks(latest_runs) == ["03:00", "05:00", "06:00"]
    # The ticks passed while paused are not run when it is unpaused.
    assert _ticks(unpaused_runs) == ["04:00", "05:00", "06:00"]


async def _pause(client: SchedulerServiceStub, specs: tuple[pb.WorkflowSpec, ...]) -> None:
    """Pause the test's schedules: a scheduler on the real clock, later in the session,
    would otherwise catch up on every tick from the test's January to now."""
    for spec in specs:
        await client.ApplyWorkflow(pb.ApplyWorkflowRequest(spec=spec, paused=True), metadata=DEV)


def _tick(run: pb.Run) -> str:
    return run.cause.cron_tick.ToDatetime(tzinfo=UTC).strftime("%H:%M")


def _ticks(runs: list[pb.Run]) -> list[str]:
    """The ticks of ``runs`` in time order (runs of one round share their created_at)."""
    return sorted(_tick(r) for r in runs)
