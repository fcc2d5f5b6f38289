"""The service runtime's parts on their own: spec checks, supervision, health, the call gate."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.api.inference import grpc_service_pb2 as oip
from strata.api.inference.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
    GRPCInferenceServiceStub,
    add_GRPCInferenceServiceServicer_to_server,
)
from strata.core.metrics import Metrics
from strata.core.rpc.server import RpcServer, Service
from strata.core.runtime import KAFKA, POSTGRES, REDIS, Loop, ServiceSpec
from strata.core.runtime.gate import LateService
from strata.core.runtime.health import Health
from strata.core.runtime.supervisor import Supervisor
from strata.core.settings import DEV_ADMIN_TOKEN, AuthSettings

BOUND = 30.0
"""Bound on waiting for something to happen: a guard against hanging, not a timing check."""
TOKEN = (("authorization", f"Bearer {DEV_ADMIN_TOKEN}"),)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_spec_refuses_what_its_dependencies_cannot_carry() -> None:
    with pytest.raises(ValueError, match="migrations need Postgres"):
        ServiceSpec(name="x", requires=(KAFKA,), migrations="x.migrations")
    with pytest.raises(ValueError, match="outbox need Postgres and Kafka"):
        ServiceSpec(name="x", requires=(POSTGRES,), outbox=True)
    with pytest.raises(ValueError, match="listed twice"):
        ServiceSpec(name="x", requires=(REDIS,), degrades=(REDIS,))
    with pytest.raises(ValueError, match="every must be positive"):
        Loop("tick", _nothing, every=0)
    spec = ServiceSpec(name="x", requires=(POSTGRES, KAFKA), degrades=(REDIS,), outbox=True)
    assert spec.uses("Redis")
    assert not spec.uses("Blob store")


async def _nothing(_: object) -> None:
    return None


class _Downs:
    """Records what the supervisor reports as down."""

    def __init__(self) -> None:
        self.seen: list[frozenset[str]] = []

    async def __call__(self, down: frozenset[str]) -> None:
        self.seen.append(down)


async def test_a_failing_task_is_reported_down_counted_and_restarted() -> None:
    metrics, downs = Metrics(), _Downs()
    supervisor = Supervisor(metrics, downs, initial=0.01, longest=0.05)
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        healthy.set()
        await asyncio.Event().wait()

    supervisor.start("flaky", flaky)
    async with asyncio.timeout(BOUND):
        await healthy.wait()
    await supervisor.stop()
    assert runs == 3
    assert metrics.task_restarts.labels(task="flaky")._value.get() == 2
    assert downs.seen == [frozenset({"flaky"}), frozenset(), frozenset({"flaky"}), frozenset()]


async def test_a_task_that_returns_is_not_restarted_and_stop_cancels_the_rest() -> None:
    supervisor = Supervisor(Metrics(), _Downs(), initial=0.01, longest=0.05)
    ran, cancelled = [], asyncio.Event()

    async def once() -> None:
        ran.append(1)

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    supervisor.start("once", once)
    supervisor.start("forever", forever)
    with pytest.raises(ValueError, match="runs already"):
        supervisor.start("once", once)
    await asyncio.sleep(0.1)
    await supervisor.stop()
    assert ran == [1]
    assert cancelled.is_set()


class _Catalog(GRPCInferenceServiceServicer):
    """Only what the test calls; the generated base answers the rest UNIMPLEMENTED."""

    async def ServerReady(self, request: object, context: object) -> oip.ServerReadyResponse:  # noqa: N802
        return oip.ServerReadyResponse(ready=True)


async def _status(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    status: int = reply.status
    return status


async def _ready(target: str) -> grpc.StatusCode | bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await GRPCInferenceServiceStub(channel).ServerReady(
                oip.ServerReadyRequest(), metadata=TOKEN, timeout=5.0
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    ready: bool = reply.ready
    return ready


async def test_calls_answer_unavailable_until_the_servicer_is_handed_over() -> None:
    gate = LateService(add_GRPCInferenceServiceServicer_to_server)
    server = RpcServer([Service(gate.name, gate.add_to)], AuthSettings())
    target = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
    try:
        assert gate.name == "inference.GRPCInferenceService"
        assert await _ready(target) == grpc.StatusCode.UNAVAILABLE
        gate.open(_Catalog())  # type: ignore[abstract]
        assert await _ready(target) is True
        gate.close()
        assert await _ready(target) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_health_serves_only_when_ready_with_no_dependency_or_task_down() -> None:
    server = RpcServer([], AuthSettings())
    target = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
    health = Health(server)
    try:
        assert await _status(target) == NOT_SERVING
        await health.ready()
        assert await _status(target) == SERVING
        await health.dependencies_down(frozenset({"Postgres"}))
        assert await _status(target) == NOT_SERVING
        await health.tasks_down(frozenset({"outbox-relay"}))
        await health.dependencies_down(frozenset())
        assert await _status(target) == NOT_SERVING
        await health.tasks_down(frozenset())
        assert await _status(target) == SERVING
    finally:
        await server.stop(0)


def test_a_function_that_is_not_a_generated_add_is_refused() -> None:
    def add_nothing(servicer: object, server: object) -> None:
        return None

    with pytest.raises(TypeError, match="registered no service"):
        LateService(add_nothing)
