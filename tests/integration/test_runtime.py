"""The service runtime, proven on a tiny example service (``example/``) against the real stack.

The example's Postgres and Redis are reached through :class:`~link.Link` s, so a
test can take a dependency away from the service (and only from it) and bring it
back. Each test names the property of the runtime it relies on.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from link import Link
from service_processes import free_port

from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from strata.core.bus import Bus
from strata.core.settings import (
    DEV_ADMIN_TOKEN,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    load,
)

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BOUND = 60.0
"""Bound on waiting for the service to get somewhere: a guard against hanging."""
GRACE = 2.0
HEALTH_INTERVAL = 0.3
RESTARTS = "strata_background_task_restarts_total"
TOKEN = (("authorization", f"Bearer {DEV_ADMIN_TOKEN}"),)


@dataclass
class Example:
    """The example service process, its links and where it logs."""

    name: str
    process: asyncio.subprocess.Process
    port: int
    metrics_port: int
    log: Path
    postgres: Link
    redis: Link
    fault: Path

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    async def health(self) -> int | None:
        async with self.channel() as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2.0
                )
            except grpc.aio.AioRpcError:
                return None
        status: int = reply.status
        return status

    async def until_health(self, wanted: int) -> None:
        async with asyncio.timeout(BOUND):
            while await self.health() != wanted:
                assert self.process.returncode is None, self.log.read_text()
                await asyncio.sleep(0.1)

    async def partitions(self, dataset: str) -> grpc.StatusCode | list[str]:
        async with self.channel() as channel:
            try:
                reply = await GRPCInferenceServiceStub(channel).ModelMetadata(
                    oip.ModelMetadataRequest(name=dataset), metadata=TOKEN, timeout=5.0
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
        return list(reply.versions)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as reply:
            text: str = reply.read().decode()
            return text

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one sample of ``/metrics``, or None when it is not there."""
        for line in self.metrics().splitlines():
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match[1] != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match[3])
        return None

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]


@pytest.fixture
async def example(tmp_path: Path) -> AsyncIterator[Example]:
    """The example service, its Postgres link down at first (the test brings it up)."""
    pg, rd = load(PostgresSettings), load(RedisSettings)
    postgres, redis = Link(pg.host, pg.port), Link(rd.host, rd.port)
    await redis.up()
    name = f"example_{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_port(), free_port()
    log, fault = tmp_path / "example.log", tmp_path / "fault"
    env = {
        **os.environ,
        "STRATA_MODE": "development",
        "STRATA_POSTGRES_PORT": str(postgres.port),
        "STRATA_REDIS_PORT": str(redis.port),
        "STRATA_SERVICE_HEALTH_INTERVAL": str(HEALTH_INTERVAL),
        "STRATA_SERVICE_PING_TIMEOUT": "1",
        "STRATA_SERVICE_SHUTDOWN_GRACE": str(GRACE),
        "STRATA_TELEMETRY_LOG_FORMAT": "json",
        "EXAMPLE_FAULT_FILE": str(fault),
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "example",
            name,
            str(port),
            str(metrics_port),
            cwd=HERE,
            env=env,
            stderr=sink,
        )
    service = Example(name, process, port, metrics_port, log, postgres, redis, fault)
    try:
        yield service
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await postgres.cut()
        await redis.cut()


async def _arrive(dataset: str, partition: str) -> None:
    async with Bus("runtime-test", kafka=load(KafkaSettings)) as bus:
        await bus.publish(DataArrived(dataset=dataset, partition=partition))


async def _until(check: Callable[[], Any], wanted: Any) -> None:
    """Poll ``check`` (sync or async) until it returns ``wanted``."""
    async with asyncio.timeout(BOUND):
        while True:
            got = check()
            if inspect.isawaitable(got):
                got = await got
            if got == wanted:
                return
            await asyncio.sleep(0.1)


async def test_calls_are_unavailable_until_the_context_is_built_then_served_from_it(
    example: Example,
) -> None:
    """No call reaches a half-built servicer; once ready, servicer and handler share the pool."""
    await _until(example.health, NOT_SERVING)
    assert await example.partitions("anything") == grpc.StatusCode.UNAVAILABLE
    await example.postgres.up()
    await example.until_health(SERVING)
    dataset = f"orders-{uuid.uuid4().hex[:6]}"
    assert await example.partitions(dataset) == grpc.StatusCode.NOT_FOUND
    await _arrive(dataset, "date=2026-11-30")
    await _until(lambda: example.partitions(dataset), ["date=2026-11-30"])


async def test_a_failing_background_task_is_restarted_and_unserves_while_down(
    example: Example,
) -> None:
    await example.postgres.up()
    await example.until_health(SERVING)
    example.fault.touch()
    await example.until_health(NOT_SERVING)
    await _until(lambda: bool(example.sample(RESTARTS, task="heartbeat")), True)
    example.fault.unlink()
    await example.until_health(SERVING)
    failures = [x for x in example.lines() if x["event"] == "background task failed, restarting it"]
    assert failures, example.log.read_text()
    assert failures[0]["task"] == "heartbeat"
    assert "fault injected" in failures[0]["exception"][0]["exc_value"]


async def test_a_required_dependency_unserves_a_degrading_one_only_shows(
    example: Example,
) -> None:
    await example.postgres.up()
    await example.until_health(SERVING)
    await example.redis.cut()
    await _until(lambda: example.sample("strata_dependency_up", dependency="Redis"), 0)
    assert await example.health() == SERVING
    await example.postgres.cut()
    await example.until_health(NOT_SERVING)
    await example.postgres.up()
    await example.redis.up()
    await example.until_health(SERVING)


async def test_health_pings_go_through_the_services_own_clients(example: Example) -> None:
    """After start, pinging opens no connection: the pool and the Redis client are reused."""
    await example.postgres.up()
    await example.until_health(SERVING)
    await asyncio.sleep(5 * HEALTH_INTERVAL)  # the pool grows to the start-up's concurrency
    opened = (example.postgres.accepted, example.redis.accepted)
    await asyncio.sleep(10 * HEALTH_INTERVAL)  # ten rounds of pings
    assert (example.postgres.accepted, example.redis.accepted) == opened
    assert example.sample("strata_dependency_up", dependency="Postgres") == 1


async def test_metrics_count_calls_by_method_and_code_and_events_by_outcome(
    example: Example,
) -> None:
    await example.postgres.up()
    await example.until_health(SERVING)
    dataset = f"rides-{uuid.uuid4().hex[:6]}"
    await _arrive(dataset, "p1")
    await _until(lambda: example.partitions(dataset), ["p1"])
    method = "/inference.GRPCInferenceService/ModelMetadata"
    handled = "strata_grpc_server_handled_total"
    missed = example.sample(handled, method=method, code="NOT_FOUND") or 0
    assert await example.partitions("missing") == grpc.StatusCode.NOT_FOUND
    # context.abort sends the status before it raises, so the client may see
    # NOT_FOUND a moment before the interceptor counts it: wait, don't race.
    await _until(lambda: example.sample(handled, method=method, code="NOT_FOUND"), missed + 1)
    assert (example.sample(handled, method=method, code="OK") or 0) >= 1
    assert example.sample("strata_grpc_server_handling_seconds_count", method=method)
    events = example.sample(
        "strata_events_total", topic="strata.data.arrived", group=example.name, outcome="handled"
    )
    assert events is not None
    assert events >= 1
    assert example.sample("strata_outbox_backlog", schema=example.name) == 0
    assert (
        example.sample("strata_consumer_lag", topic="strata.data.arrived", group=example.name)
        is not None
    )


async def test_a_call_in_flight_at_sigterm_still_gets_its_answer_from_the_context(
    example: Example,
) -> None:
    """The pool closes only after in-flight calls drained, within the grace."""
    await example.postgres.up()
    await example.until_health(SERVING)
    async with example.channel() as channel:
        call = asyncio.ensure_future(
            GRPCInferenceServiceStub(channel).ModelInfer(
                oip.ModelInferRequest(model_name="slow"), metadata=TOKEN, timeout=BOUND
            )
        )
        await asyncio.sleep(0.3)  # the call is in the handler now
        example.process.send_signal(signal.SIGTERM)
        reply = await call
    async with asyncio.timeout(BOUND):
        code = await example.process.wait()
    assert reply.id == "answered after the pause"
    assert code == 0, example.log.read_text()


async def test_shutdown_ends_within_the_grace_even_with_a_call_that_never_ends(
    example: Example,
) -> None:
    await example.postgres.up()
    await example.until_health(SERVING)
    async with example.channel() as channel:
        stuck = asyncio.ensure_future(
            GRPCInferenceServiceStub(channel).ModelInfer(
                oip.ModelInferRequest(model_name="hang"), metadata=TOKEN
            )
        )
        await asyncio.sleep(0.5)  # the call is in the handler now
        example.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            code = await example.process.wait()
        stuck.cancel()
    assert code == 0, example.log.read_text()
    events = [x["event"] for x in example.lines()]
    assert "stopping" in events


async def test_work_stuck_past_the_grace_is_abandoned_and_named(example: Example) -> None:
    """A background task that ignores cancellation cannot hold the process: it exits 0
    a little past the grace, and the warning says where the stop was and what still ran."""
    await example.postgres.up()
    await example.until_health(SERVING)
    example.fault.write_text("ignore cancellation")
    await asyncio.sleep(0.5)  # the next beat is stuck now
    example.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(BOUND):
        code = await example.process.wait()

    assert code == 0, example.log.read_text()
    abandoned = [x for x in example.lines() if x["event"].startswith("shutdown grace passed")]
    assert len(abandoned) == 1, example.log.read_text()
    assert abandoned[0]["stage"] == "stopping tasks"
    assert any("heartbeat" in task for task in abandoned[0]["pending"]), abandoned[0]


async def test_sigterm_while_a_rejoin_waits_for_a_dead_member_still_stops_on_time(
    example: Example,
) -> None:
    """A rebalance waits for every member of the group to rejoin, a SIGKILLed one until
    its session times out (two minutes): the service's consumer, rejoining, cuts its
    stop short at the grace and says so, and the service stops cleanly."""
    await example.postgres.up()
    await example.until_health(SERVING)
    dead = await _member(example.name)
    newcomer: asyncio.subprocess.Process | None = None
    try:
        assert dead.stdout is not None
        assert await asyncio.wait_for(dead.stdout.readline(), BOUND) == b"assigned\n"
        dead.kill()
        await dead.wait()
        joins = _joins(example)
        newcomer = await _member(example.name)
        await _until(lambda: _joins(example) > joins, True)
        example.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            code = await example.process.wait()
    finally:
        for peer in (dead, newcomer):
            if peer is not None and peer.returncode is None:
                peer.kill()
                await peer.wait()

    lines = example.lines()
    cut = [line for line in lines if line["event"].startswith("consumer stop cut short")]
    assert code == 0, example.log.read_text()
    assert [line["cut_short"] for line in cut] == ["leaving the group"]
    assert lines[-1]["event"] == "stopped"


async def _member(group: str) -> asyncio.subprocess.Process:
    """Another process joining ``group`` on the example's topic (:mod:`group_peer`)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "group_peer.py"),
        "strata.data.arrived",
        group,
        stdout=asyncio.subprocess.PIPE,
    )


def _joins(example: Example) -> int:
    """How many JoinGroup requests the example's consumer sent (aiokafka logs each)."""
    wanted = f"(Re-)joining group {example.name}"
    return sum(line["event"] == wanted for line in example.lines())
