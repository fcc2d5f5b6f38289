"""A real ``python -m strata.streamer`` for the run, on free ports, and a client for it.

The benchmark starts its own streamer process (as a deployment runs it: its own
gRPC and metrics ports, a bearer token of the benchmark's, the stack's settings
from the environment) and stops it with SIGTERM at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.transforms.definition import FeatureView
from strata.transforms.spec import view_to_spec

TOKEN = "bench-features-token"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
STARTUP = 60.0
"""Longest wait for the streamer to report SERVING: a guard against hanging."""


class StreamerError(RuntimeError):
    """The streamer exited or did not come up; the message names its log."""


@dataclass(frozen=True)
class Streamer:
    address: str
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def streamer(log: Path) -> AsyncIterator[Streamer]:
    """A streamer process, SERVING for the block; SIGTERM (then SIGKILL) after."""
    port = free_port()
    env = {
        **os.environ,
        "STRATA_SERVICE_STREAMER_PORT": str(port),
        "STRATA_SERVICE_STREAMER_METRICS_PORT": str(free_port()),
        "STRATA_AUTH_TOKENS": json.dumps({TOKEN: {"principal": "bench", "roles": ["developer"]}}),
    }
    env.setdefault("STRATA_TELEMETRY_LOG_LEVEL", "WARNING")
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.streamer", env=env, stderr=sink
        )
    address = f"127.0.0.1:{port}"
    try:
        async with asyncio.timeout(STARTUP):
            while not await _serving(address):
                if process.returncode is not None:
                    raise StreamerError(f"the streamer exited; see {log}")
                await asyncio.sleep(0.2)
        yield Streamer(address, process.pid, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STARTUP)
        except TimeoutError:
            process.kill()
            await process.wait()


async def apply(channel: grpc.aio.Channel, view: FeatureView) -> int:
    """Apply ``view`` through the streamer's API; its version."""
    reply = await FeatureServiceStub(channel).ApplyFeatureView(
        pb.ApplyFeatureViewRequest(spec=view_to_spec(view)), metadata=METADATA
    )
    version: int = reply.feature_view.version
    return version


async def delete(channel: grpc.aio.Channel, views: Sequence[FeatureView]) -> None:
    """Delete the run's views through the streamer's API, those it never applied excepted.

    A view left in the catalog would be streamed again by every later streamer,
    waiting for its deleted topic and loading the next run's measurements.
    """
    stub = FeatureServiceStub(channel)
    for view in views:
        try:
            await stub.DeleteFeatureView(
                pb.DeleteFeatureViewRequest(name=view.name), metadata=METADATA
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
