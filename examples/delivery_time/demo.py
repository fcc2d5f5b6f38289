"""``make demo``: the delivery-time story on a local stack, from nothing running to a report.

It brings the local stack up and starts the six services (``strata dev``'s parts,
their logs in ``<stack home>/demo``), applies this folder's feature views and
workflow with the CLI, streams two past weeks of orders, lands week 1's export
and follows its run live, streams live orders and predicts a few, lands week 2's
export and shows the champion swap while a client keeps predicting, then prints
the report. It exits 1 if anything failed, and stops what it started, on Ctrl-C too.

It lives here, beside the example, rather than in ``strata.sdk``: it drives this
project's modules (imported as siblings, as the agent imports them), and the SDK
must not depend on an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# One namespace per demo: a second demo on a stack still running the first gets a topic,
# views, workflow and model of its own, so runs are never de-duplicated away.
os.environ.setdefault("DELIVERY_NAMESPACE", f"_demo{uuid.uuid4().hex[:4]}")
os.environ.setdefault("STRATA_BLOB_BACKEND", "s3")
os.environ.setdefault("STRATA_MODE", "development")

import grpc  # noqa: E402
import landing  # noqa: E402
import orders  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from project import FEATURES, LOAD_VIEW, MODEL, ORDERS_TOPIC, PREP_VIEW, WORKFLOW  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.tree import Tree  # noqa: E402

from strata.api.data.v1.data_pb2 import DataArrived  # noqa: E402
from strata.api.features.v1 import features_pb2 as fpb  # noqa: E402
from strata.api.gateway.v1 import gateway_pb2 as gpb  # noqa: E402
from strata.api.gateway.v1.gateway_pb2_grpc import PredictionServiceStub  # noqa: E402
from strata.api.registry.v1 import registry_pb2 as rpb  # noqa: E402
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub  # noqa: E402
from strata.api.scheduler.v1 import scheduler_pb2 as spb  # noqa: E402
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub  # noqa: E402
from strata.core import kafka  # noqa: E402
from strata.core.envelope import open_envelope  # noqa: E402
from strata.core.settings import KafkaSettings, ServiceSettings, load  # noqa: E402
from strata.core.topics import DATA_ARRIVED, PREDICTIONS  # noqa: E402
from strata.sdk import dev  # noqa: E402
from strata.sdk.client import CommandError, service_channel  # noqa: E402
from strata.sdk.lineage import lineage_tree, prediction_lineage  # noqa: E402
from strata.sdk.skew import report_table, skew_report  # noqa: E402
from strata.sdk.stack import commands  # noqa: E402

BOUND = 600.0
"""Seconds any one step may take before the demo gives up on it (a guard against hangs)."""
TERMINAL = (spb.RUN_STATE_SUCCEEDED, spb.RUN_STATE_FAILED, spb.RUN_STATE_CANCELLED)
LIVE_ORDERS = 24
SAMPLES = ((1, 2.5), (4, 7.5), (7, 4.0))
"""(restaurant, distance km) of the live requests shown in the report."""


class DemoFailedError(Exception):
    """A step of the story did not do what it should; the message says which."""


@dataclass
class TaskLine:
    task_id: str
    state: str
    node: str
    seconds: float | None
    message: str


@dataclass
class WeekResult:
    week: int
    run_id: str
    state: str
    seconds: float
    tasks: list[TaskLine]
    compare: dict[str, Any]
    versions: dict[str, rpb.ModelVersion] = field(default_factory=dict)


@dataclass
class LivePrediction:
    restaurant: int
    distance_km: float
    minutes: float
    version: int
    prediction_id: str
    features: dict[str, float]


@dataclass
class Report:
    weeks: list[WeekResult] = field(default_factory=list)
    predictions: list[LivePrediction] = field(default_factory=list)
    swap: tuple[int, int] | None = None
    swap_requests: int = 0
    swap_failures: list[str] = field(default_factory=list)
    landed_to_serving: float | None = None
    peak_rss: dict[str, int] = field(default_factory=dict)
    lineage: Tree | None = None
    """Where the first live prediction came from (``strata lineage``)."""
    skew: Table | None = None
    """Served features against the batch path's (``strata skew``)."""


def main() -> int:
    # Piped to a file or CI, rich would wrap at 80 columns: the report's tables need more.
    out = Console() if sys.stdout.isatty() else Console(width=140)
    began = time.monotonic()
    already = {server.name for server in commands.servers() if server.running_pid()}
    report = Report()
    try:
        code = commands.run("up")
        if code == 0:
            code = asyncio.run(_guarded(out, report))
    except KeyboardInterrupt:
        code = 130
    finally:
        started = [server for server in commands.servers() if server.name not in already]
        if started:
            out.print("stopping the stack servers the demo started")
            with commands.exclusive(commands.stack_home()):
                asyncio.run(dev.stop_servers(started))
    if report.weeks:
        show_report(out, report)
    verdict = "the demo succeeded" if code == 0 else "the demo FAILED"
    out.print(f"{verdict} in {time.monotonic() - began:.0f}s", style="bold")
    return code


async def _guarded(out: Console, report: Report) -> int:
    """The story under SIGINT/SIGTERM: a signal cancels it and the services still stop."""
    story = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert story is not None
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        story.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    try:
        async with services(out) as running:
            sampler = asyncio.create_task(_sample_memory(running, report.peak_rss))
            try:
                await tell(out, report, running)
            finally:
                sampler.cancel()
        return 0
    except asyncio.CancelledError:
        if not interrupted:
            raise
        out.print("interrupted: stopping everything", style="bold red")
        return 130
    except DemoFailedError as error:
        out.print(f"FAILED: {error}", style="bold red")
        return 1
    except TimeoutError:
        logs = commands.stack_home() / "demo"
        out.print(
            f"FAILED: a step took more than {BOUND:.0f}s; the services' logs are in {logs}",
            style="bold red",
        )
        return 1


@contextlib.asynccontextmanager
async def services(out: Console) -> AsyncIterator[list[dev.Service]]:
    """The six services, SERVING, their output in ``<stack home>/demo/<name>.log``."""
    settings = load(ServiceSettings)
    logs = commands.stack_home() / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    environment = {
        **dev.child_environment(os.environ, settings),
        "STRATA_GATEWAY_MODELS": f'{{"{MODEL}": ["champion", "challenger"]}}',
    }
    started: list[dev.Service] = []
    try:
        for name, colour in zip(dev.SERVICES, dev.COLOURS, strict=True):
            address = f"{settings.host}:{settings.port_of(name)}"
            with (logs / f"{name}.log").open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    f"strata.{name}",
                    env=environment,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append(dev.Service(name, address, process, colour))
        with out.status("starting the six services…"):
            async with asyncio.timeout(dev.READY_BOUND):
                for service in started:
                    while not await dev.serving(service.address):
                        if service.process.returncode is not None:
                            raise DemoFailedError(
                                f"{service.name} exited with {service.process.returncode}; "
                                f"see {logs / service.name}.log"
                            )
                        await asyncio.sleep(0.25)
        out.print(f"six services serving (logs in {logs})")
        yield started
    finally:
        await asyncio.shield(dev.stop_all(started, settings.shutdown_grace + dev.KILL_AFTER, out))


async def tell(out: Console, report: Report, running: list[dev.Service]) -> None:
    """The story, step by step; DemoFailedError when a step does not do its part."""
    _cli(out, "features", "apply", "features.py")
    _cli(out, "workflow", "apply", "workflow.py")
    await landing.create_orders_topic()
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=14
    )
    weeks = {n: orders.week(n, start + timedelta(days=7 * (n - 1))) for n in (1, 2)}
    with out.status("streaming two past weeks of orders; the streamer lands them offline…"):
        async with _announced(ORDERS_TOPIC) as landed:
            for table in weeks.values():
                await landing.publish_orders(table)
            await landed(2 * sum(t.num_rows for t in weeks.values()))
    out.print(f"{sum(t.num_rows for t in weeks.values())} orders on {ORDERS_TOPIC}, landed offline")

    report.weeks.append(await _week(out, 1, weeks[1]))
    async with _announced(ORDERS_TOPIC) as landed:
        await landing.publish_orders(orders.live(LIVE_ORDERS, datetime.now(UTC)))
        await landed(2 * LIVE_ORDERS)
    out.print(f"{LIVE_ORDERS} live orders streamed")
    async with service_channel("gateway") as channel:
        stub = PredictionServiceStub(channel)
        first = await _serving_version(stub)
        report.predictions = await _predict_samples(stub)
        report.lineage = await _lineage(report.predictions[0].prediction_id)
        report.skew = report_table(await skew_report(MODEL, settle=0))
        swap = await _swap(out, report, stub, first, weeks[2])
    report.weeks.append(swap)


async def _lineage(prediction_id: str) -> Tree:
    """The lineage of a prediction, once the registry has it (the prediction log is
    asynchronous)."""
    async with asyncio.timeout(BOUND):
        while True:
            try:
                return lineage_tree(await prediction_lineage(prediction_id))
            except CommandError:
                await asyncio.sleep(0.5)


async def _week(out: Console, number: int, table: pa.Table) -> WeekResult:
    arrived = await landing.land_week(table, number)
    out.print(f"landed {arrived.dataset}/{arrived.partition} ({arrived.row_count} orders)")
    result = await _follow(out, number, arrived)
    if result.state != "SUCCEEDED":
        raise DemoFailedError(f"the run of week {number} ended {result.state}")
    return result


async def _follow(out: Console, number: int, arrived: DataArrived) -> WeekResult:
    """Follow the run the arrival started until it ends: a live table on a terminal,
    a line per task change otherwise."""
    began = time.monotonic()
    async with service_channel("scheduler") as channel:
        stub = SchedulerServiceStub(channel)
        run = await _run_of(stub, arrived.partition)
        title = f"week {number}: run {run.run_id}"
        if out.is_terminal:
            with Live(_table(title, run), console=out, refresh_per_second=4) as live:
                while run.state not in TERMINAL:
                    await asyncio.sleep(0.5)
                    run = await _get(stub, run.run_id)
                    live.update(_table(title, run))
        else:
            seen: dict[str, str] = {}
            while True:
                for line in _lines(run):
                    if seen.get(line.task_id) != line.state:
                        seen[line.task_id] = line.state
                        text = f"{title}: {line.task_id} {line.state} {line.node}".rstrip()
                        out.print(text, soft_wrap=True)
                if run.state in TERMINAL:
                    break
                await asyncio.sleep(0.5)
                run = await _get(stub, run.run_id)
    compare = next((dict(t.outputs) for t in run.tasks if t.task_id == "compare"), {})
    result = WeekResult(
        number, run.run_id, _state(run), time.monotonic() - began, _lines(run), compare
    )
    result.versions = await _versions()
    return result


async def _run_of(stub: SchedulerServiceStub, partition: str) -> spb.Run:
    async with asyncio.timeout(BOUND):
        while True:
            page = await stub.ListRuns(spb.ListRunsRequest(workflow_name=WORKFLOW))
            for run in page.runs:
                if run.cause.data_arrival.partition == partition:
                    return await _get(stub, run.run_id)
            await asyncio.sleep(0.25)


async def _get(stub: SchedulerServiceStub, run_id: str) -> spb.Run:
    reply = await stub.GetRun(spb.GetRunRequest(run_id=run_id))
    run: spb.Run = reply.run
    return run


def _state(run: spb.Run) -> str:
    return spb.RunState.Name(run.state).removeprefix("RUN_STATE_")


def _lines(run: spb.Run) -> list[TaskLine]:
    lines = []
    for task in run.tasks:
        seconds = None
        if task.HasField("started_at") and task.HasField("finished_at"):
            seconds = (task.finished_at.ToDatetime() - task.started_at.ToDatetime()).total_seconds()
        state = spb.TaskState.Name(task.state).removeprefix("TASK_STATE_")
        lines.append(TaskLine(task.task_id, state, task.node_id, seconds, task.message))
    return lines


def _table(title: str, run: spb.Run) -> Table:
    table = Table("task", "state", "node", "seconds", title=f"{title} — {_state(run)}")
    for line in _lines(run):
        seconds = "" if line.seconds is None else f"{line.seconds:.1f}"
        table.add_row(line.task_id, line.state, line.node, seconds)
    return table


async def _versions() -> dict[str, rpb.ModelVersion]:
    """The latest version of each candidate, by candidate name."""
    async with service_channel("registry") as channel:
        reply = await ModelRegistryServiceStub(channel).ListVersions(
            rpb.ListVersionsRequest(model_name=MODEL)
        )
    latest: dict[str, rpb.ModelVersion] = {}
    for version in reply.model_versions:
        candidate = version.labels["candidate"]
        if candidate not in latest or version.version > latest[candidate].version:
            latest[candidate] = version
    return latest


def _row(restaurant: int, distance_km: float) -> gpb.PredictRow:
    return gpb.PredictRow(
        entity_keys={"restaurant_id": fpb.Value(int64_value=restaurant)},
        features={"distance_km": fpb.Value(double_value=distance_km)},
    )


async def _serving_version(stub: PredictionServiceStub) -> int:
    """The champion's version once the gateway answers with it (it loads in the background)."""
    champion = next(v.version for v in (await _versions()).values() if "champion" in v.aliases)
    async with asyncio.timeout(BOUND):
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Predict(gpb.PredictRequest(model_name=MODEL, rows=[_row(0, 1)]))
                if reply.model_version == champion:
                    return champion
            await asyncio.sleep(0.2)


async def _predict_samples(stub: PredictionServiceStub) -> list[LivePrediction]:
    """A few live predictions, with the features the gateway read (from its prediction log)."""
    request_id = f"demo-{uuid.uuid4().hex[:8]}"
    async with _tail(PREDICTIONS.name) as consumer:
        reply = await stub.Predict(
            gpb.PredictRequest(
                model_name=MODEL, rows=[_row(r, d) for r, d in SAMPLES], request_id=request_id
            )
        )
        logged: dict[str, dict[str, float]] = {}
        async with asyncio.timeout(BOUND):
            while len(logged) < len(SAMPLES):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        payload: Any = open_envelope(record.value).payload
                        if getattr(payload, "request_id", "") == request_id:
                            logged[payload.prediction_id] = {
                                ref: _number(v.value) for ref, v in payload.features.items()
                            }
    return [
        LivePrediction(
            restaurant,
            distance,
            _number(next(iter(p.outputs.values()))),
            reply.model_version,
            p.prediction_id,
            logged[p.prediction_id],
        )
        for (restaurant, distance), p in zip(SAMPLES, reply.predictions, strict=True)
    ]


def _number(value: fpb.Value) -> float:
    kind = value.WhichOneof("kind")
    if kind in ("int64_value", "double_value"):
        return float(getattr(value, kind))
    if kind in ("float_list_value", "double_list_value"):
        return float(getattr(value, kind).values[0])
    return float("nan")


async def _swap(
    out: Console, report: Report, stub: PredictionServiceStub, first: int, week: pa.Table
) -> WeekResult:
    """Land week 2 while a client predicts without pause, until a new champion answers."""
    answered: list[int] = []

    async def client() -> None:
        n = 0
        while sum(v != first for v in answered) < 5:
            n += 1
            try:
                reply = await stub.Predict(
                    gpb.PredictRequest(model_name=MODEL, rows=[_row(n % 12, 1.0 + n % 9)])
                )
                answered.append(reply.model_version)
            except grpc.aio.AioRpcError as error:
                report.swap_failures.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.02)

    predicting = asyncio.create_task(client())
    landed = time.monotonic()
    try:
        result = await _week(out, 2, week)
        await asyncio.wait_for(asyncio.shield(predicting), BOUND)
    finally:
        predicting.cancel()
    report.landed_to_serving = time.monotonic() - landed
    report.swap = (first, next(v for v in answered if v != first))
    report.swap_requests = len(answered) + len(report.swap_failures)
    if report.swap_failures:
        raise DemoFailedError(f"{len(report.swap_failures)} predictions failed during the swap")
    return result


@contextlib.asynccontextmanager
async def _tail(topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of ``topic`` from its end now: only what is produced from here on."""
    consumer = kafka.consumer(
        load(KafkaSettings),
        topic,
        group_id=f"demo-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(BOUND):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
        for partition in consumer.assignment():
            await consumer.position(partition)  # fixes "the end" before anything is produced
        yield consumer
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def _announced(dataset: str) -> AsyncIterator[Callable[[int], Any]]:
    """``await landed(n)``: until partitions of ``dataset`` announced from now hold n rows."""
    async with _tail(DATA_ARRIVED.name) as consumer:
        rows = 0

        async def landed(count: int) -> None:
            nonlocal rows
            async with asyncio.timeout(BOUND):
                while rows < count:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for record in records:
                            payload = open_envelope(record.value).payload
                            if isinstance(payload, DataArrived) and payload.dataset == dataset:
                                rows += payload.row_count

        yield landed


async def _sample_memory(running: list[dev.Service], peaks: dict[str, int]) -> None:
    """Each service's resident memory, its process tree (the agent's workers too), twice a
    second; the peak per service."""
    while True:
        for service in running:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(service.process.pid)
                tree = [root, *root.children(recursive=True)]
                rss = sum(_rss(p) for p in tree)
                peaks[service.name] = max(peaks.get(service.name, 0), rss)
        await asyncio.sleep(0.5)


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def _cli(out: Console, *args: str) -> None:
    """``strata <args>`` in this folder, as a user types it."""
    strata = Path(sys.executable).with_name("strata")
    done = subprocess.run(
        [str(strata), *args], cwd=HERE, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise DemoFailedError(f"strata {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    out.print(f"$ strata {' '.join(args)}\n{done.stdout.rstrip()}", highlight=False, soft_wrap=True)


def show_report(out: Console, report: Report) -> None:
    """The demo's report; every number in it was measured by this run."""
    out.rule("report")
    for week in report.weeks:
        table = Table("task", "state", "seconds", "node", "note", title=f"week {week.week}")
        for line in week.tasks:
            seconds = "" if line.seconds is None else f"{line.seconds:.1f}"
            table.add_row(line.task_id, line.state, seconds, line.node, line.message[:60])
        out.print(table)
        out.print(f"run {week.run_id}: {week.state} in {week.seconds:.1f}s")
        _candidates(out, week)
    if report.predictions:
        table = Table("prediction id", "restaurant", "km", "minutes", "version", "features read")
        for p in report.predictions:
            read = ", ".join(
                f"{ref.split(':', 1)[1]}={value:g}"
                for ref, value in p.features.items()
                if ref in FEATURES
            )
            table.add_row(
                p.prediction_id[:8],
                str(p.restaurant),
                f"{p.distance_km:g}",
                f"{p.minutes:.1f}",
                str(p.version),
                read,
            )
        out.print(table)
    if report.lineage is not None:
        out.print(report.lineage)
    if report.skew is not None:
        out.print(report.skew)
    if report.swap is not None:
        before, after = report.swap
        out.print(
            f"champion swap: version {before} → {after} with {report.swap_requests} requests "
            f"made during it, {len(report.swap_failures)} failed"
        )
    if report.landed_to_serving is not None:
        out.print(f"week 2 landed → new champion serving: {report.landed_to_serving:.1f}s")
    if report.peak_rss:
        table = Table("service", "peak resident memory (MiB)", title="services")
        for name, rss in report.peak_rss.items():
            table.add_row(name, f"{rss / 2**20:.0f}")
        out.print(table)
    out.print(f"feature views: {PREP_VIEW}, {LOAD_VIEW}; model: {MODEL}")


def _candidates(out: Console, week: WeekResult) -> None:
    table = Table("candidate", "version", "held-out MAE (min)", "aliases")
    for candidate, version in sorted(week.versions.items()):
        table.add_row(
            candidate,
            str(version.version),
            f"{version.metrics['holdout_mae_minutes']:.3f}",
            ", ".join(version.aliases) or "-",
        )
    out.print(table)
    deployed = [
        t.task_id for t in week.tasks if t.task_id.startswith("deploy") and t.state == "SUCCEEDED"
    ]
    out.print(f"deployed: {', '.join(deployed) or 'nothing'} — {week.compare.get('reason', '')}")


if __name__ == "__main__":
    sys.exit(main())
