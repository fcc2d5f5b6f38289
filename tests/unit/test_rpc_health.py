"""A service's gRPC health follows its dependencies: what load balancers and probes rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.core.errors import UnreachableError
from strata.core.readiness import Dependency, Probe, keep_health
from strata.core.rpc import RpcServer
from strata.core.settings import AuthSettings, RedisSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BOUND = 30.0
"""Bound on waiting for a health change: a guard against hanging, not a timing check."""


class Switch:
    """A stand-in dependency that answers while it is up."""

    def __init__(self) -> None:
        self.up = False

    async def ping(self, settings: RedisSettings, seconds: float) -> None:
        if not self.up:
            raise UnreachableError("Redis", settings.address, "connection refused")


class Resources:
    """Counts how often the service's lifespan is entered and left."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        self.opened += 1
        try:
            yield
        finally:
            self.closed += 1


async def _status(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    status: int = reply.status
    return status


async def _until(target: str, wanted: int) -> None:
    """Watch the health stream until it reports ``wanted``."""
    async with asyncio.timeout(BOUND), grpc.aio.insecure_channel(target) as channel:
        async for reply in health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest()
        ):
            if reply.status == wanted:
                return


async def test_health_follows_the_dependency_and_the_lifespan_opens_once() -> None:
    server = RpcServer([], AuthSettings())
    target = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
    redis, resources = Switch(), Resources()
    probe = Probe(Dependency("Redis", RedisSettings, redis.ping), RedisSettings(), 1.0)
    watching = asyncio.create_task(keep_health(server, [probe], 0.02, resources.lifespan))
    try:
        assert await _status(target) == NOT_SERVING
        redis.up = True
        await _until(target, SERVING)
        assert resources.opened == 1
        redis.up = False
        await _until(target, NOT_SERVING)
        redis.up = True
        await _until(target, SERVING)
        assert (resources.opened, resources.closed) == (1, 0)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await server.stop(0)
    assert resources.closed == 1
