"""Run the feature store benchmark on the local stack: ``python -m bench.features [--quick]``.

Prints the tables and, unless ``--quick``, writes them with the raw numbers to
``bench/results/``. Needs the local stack (``make stack-up``; ``make bench`` starts
it). The first run installs Feast into a virtualenv of its own (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import grpc
import pyarrow.parquet as pq
import redis.asyncio

from bench.bus.machine import facts, load_average
from bench.features import data, freshness, online, training
from bench.features.feast_peer import (
    FEAST_VERSION,
    FeastError,
    FeastWorker,
    feature_server,
    virtualenv,
    write_repo,
)
from bench.features.plan import FULL, QUICK, Plan
from bench.features.report import Report
from bench.features.streamer import StreamerError, apply, delete, free_port, streamer
from strata.core import kafka
from strata.core import redis as strata_redis
from strata.core.blobs import open_blob_store
from strata.core.errors import StrataError
from strata.core.postgres import create_pool
from strata.core.redis_multiplexed import MultiplexedConnection
from strata.core.settings import (
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    StackSettings,
    load,
)
from strata.transforms.definition import FeatureView, TopicSource

T = TypeVar("T")

DEADLINE = 900.0
"""Seconds a run may take (Feast's install not counted); about 450 on a loaded 2-core machine."""


async def run(plan: Plan) -> Report:
    """Every part of the benchmark, one after another, in a folder of its own."""
    venv = virtualenv()
    run_id = uuid.uuid4().hex[:10]
    folder = load(StackSettings).home / "bench" / f"features-{run_id}"
    folder.mkdir(parents=True)
    started, clock = datetime.now(UTC), time.perf_counter()
    try:
        report = await _measured(plan, venv, run_id, folder, started)
    except BaseException:
        print(f"the run's data and logs are kept in {folder}", file=sys.stderr)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    return replace(report, seconds=time.perf_counter() - clock)


async def _measured(plan: Plan, venv: Path, run_id: str, folder: Path, started: datetime) -> Report:
    async with asyncio.timeout(DEADLINE):
        machine = await _machine()
        files = data.generate(
            folder, plan.rows, plan.labels, plan.entities, plan.served, datetime.now(UTC)
        )
        view = data.drivers_view(f"bench.features.{run_id}")
        backlog_view = replace(
            data.drivers_view(f"bench.features.backlog.{run_id}"),
            name=f"bench_backlog_{run_id}",
        )
        feast = FeastWorker(
            venv,
            write_repo(folder / "feast", f"strata_bench_{run_id}"),
            folder / "feast-worker.log",
        )
        try:
            _step(
                "Feast apply",
                lambda: feast.ask(
                    "apply", rows=str(files.rows), online_rows=str(files.online_rows)
                ),
            )
            trained = _step(
                "point-in-time training sets",
                lambda: training.measure(view, files, feast, plan.training_rounds, folder),
            )
            now = datetime.now(UTC)
            _step(
                "Feast materialize",
                lambda: feast.ask(
                    "materialize",
                    start=(now - timedelta(days=1)).isoformat(),
                    end=(now + timedelta(minutes=1)).isoformat(),
                ),
            )
            async with (
                _topics(view, backlog_view) as topics,
                _online_stack(folder, venv) as (client, channel, streamer, url, pid),
            ):
                try:
                    served = pq.read_table(files.online_rows)
                    await apply(channel, view)
                    await online.store(client, view, served)
                    connection = MultiplexedConnection(load(RedisSettings))
                    reads = online.Reads(client, connection, view, streamer, url)
                    table = online.expected(served)
                    print("online reads ...", file=sys.stderr, flush=True)
                    try:
                        wrong = await online.check(reads, table)
                        local, remote = await online.measure(
                            reads,
                            list(table),
                            plan.online_rounds,
                            plan.online_samples,
                            plan.network_samples,
                        )
                    finally:
                        reads.close()
                        await connection.aclose()
                    print("streaming ...", file=sys.stderr, flush=True)
                    fresh, through = await _streaming(
                        plan, client, channel, (view, backlog_view), topics, pid
                    )
                finally:
                    await delete(channel, (view, backlog_view))
            feast.ask("teardown")
        finally:
            feast.close()
            await _clean_up((view, backlog_view))
    machine["load at end"] = load_average()
    return Report(
        started=started,
        seconds=0.0,
        command=shlex.join(sys.orig_argv),
        machine=machine,
        plan=plan,
        training=trained,
        online=online.OnlineResult(local, remote, wrong, len(table)),
        freshness=fresh,
        throughput=through,
    )


@asynccontextmanager
async def _online_stack(
    folder: Path, venv: Path
) -> AsyncIterator[tuple[redis.asyncio.Redis, grpc.aio.Channel, str, str, int]]:
    """Redis client, the streamer (a channel to it and its address), Feast's server's URL,
    and the streamer's pid."""
    client = strata_redis.client(load(RedisSettings))
    try:
        async with (
            streamer(folder / "streamer.log") as process,
            grpc.aio.insecure_channel(process.address) as channel,
            feature_server(venv, folder / "feast", free_port(), folder / "feast-serve.log") as url,
        ):
            yield client, channel, process.address, url, process.pid
    finally:
        await client.aclose()


@asynccontextmanager
async def _topics(*views: FeatureView) -> AsyncIterator[list[str]]:
    """The views' raw topics (and dead-letter topics); deleted after.

    Made before any view is applied, as a user would: a view applied first waits for
    its topic with a growing pause.
    """
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    topics: list[str] = []
    try:
        for view in views:
            assert isinstance(view.source, TopicSource), "the benchmark's views follow topics"
            topics += await freshness.create_topic(admin, view.source.topic)
        yield [view.source.topic for view in views if isinstance(view.source, TopicSource)]
    finally:
        if topics:
            await admin.delete_topics(topics)
        await admin.close()


async def _streaming(
    plan: Plan,
    client: redis.asyncio.Redis,
    channel: grpc.aio.Channel,
    views: tuple[FeatureView, FeatureView],
    topics: list[str],
    pid: int,
) -> tuple[freshness.FreshnessResult, freshness.ThroughputResult]:
    """Freshness on the first view's topic, then throughput over the second's, filled first."""
    view, backlog_view = views
    producer = kafka.producer(load(KafkaSettings))
    try:
        await producer.start()
        db = load(RedisSettings).db
        writes = freshness.Writes(client, view, db)
        async with freshness.keyspace_events(client):
            await writes.start()
            try:
                fresh = await freshness.freshness(
                    producer,
                    writes,
                    topics[0],
                    plan.stream_events,
                    plan.stream_rate,
                    plan.stream_warmup,
                )
            finally:
                await writes.close()
            ends = await freshness.fill(producer, topics[1], plan.backlog, plan.entities)
            first = freshness.Writes(client, backlog_view, db)
            last = freshness.Writes(client, backlog_view, db, ends)
            await first.start()
            await last.start()
            try:
                through = await freshness.throughput(
                    channel, first, last, backlog_view, plan.backlog, pid
                )
            finally:
                await first.close()
                await last.close()
    finally:
        await producer.stop()
    return fresh, through


async def _clean_up(views: tuple[FeatureView, ...]) -> None:
    """Remove the Parquet partitions the run's streams landed (``offline/<topic>/``).

    ``DeleteFeatureView`` (called while the run's streamer still runs) removed the
    views, their streams and their online values; it leaves the offline partitions,
    which are data, so the benchmark removes its own here.
    """
    async with open_blob_store(load(BlobSettings)) as blobs:
        for view in views:
            if isinstance(view.source, TopicSource):
                for key in await blobs.list(f"offline/{view.source.topic}/"):
                    await blobs.delete(key)


async def _machine() -> dict[str, str]:
    pool = await create_pool(load(PostgresSettings))
    try:
        machine = await facts(pool)
    finally:
        await pool.close()
    client = strata_redis.client(load(RedisSettings))
    try:
        server = await client.info("server")
    finally:
        await client.aclose()
    load_at_start = machine.pop("load at start")
    machine |= {
        "redis": str(server.get("redis_version", "unknown")),
        "duckdb": version("duckdb"),
        "pyarrow": version("pyarrow"),
        "feast": FEAST_VERSION,
        "load at start": load_at_start,
    }
    return machine


def _step(name: str, work: Callable[[], T]) -> T:
    """Run one blocking part, saying on stderr what runs and how long it took."""
    print(f"{name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = work()
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes to check the code; writes nothing"
    )
    args = parser.parse_args()
    os.environ.setdefault("STRATA_TELEMETRY_LOG_LEVEL", "WARNING")
    try:
        report = asyncio.run(run(QUICK if args.quick else FULL))
    except TimeoutError as exc:
        reason = str(exc) or f"a step ran out of time (the run may take {DEADLINE:g} s)"
        sys.exit(f"bench.features: {reason}; see the last step above")
    except (StrataError, FeastError, StreamerError) as exc:
        sys.exit(f"bench.features: {exc}")
    print(report.markdown())
    if not args.quick:
        for path in report.write():
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
