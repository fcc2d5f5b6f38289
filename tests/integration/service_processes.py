"""Strata services as the integration tests run them: real processes on free ports.

``async with running("scheduler", folder, STRATA_AUTH_TOKENS=...) as service`` starts
``python -m strata.scheduler`` with its gRPC and metrics ports on free ports, waits
until its health is SERVING (failing with its log if it exits), and stops it with
SIGTERM afterwards (SIGKILL if it overstays).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BOUND = 60.0
"""Bound on waiting for a process to get somewhere: a guard against hanging."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServiceProcess:
    """A running service: where it answers and where it logs."""

    address: str
    metrics_port: int
    log: Path
    process: asyncio.subprocess.Process
    """The process itself, for tests that kill it (a SIGKILL mid-work)."""


async def serving(address: str) -> bool:
    """Whether the server at ``address`` reports SERVING now."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@asynccontextmanager
async def running(name: str, folder: Path, **env: str) -> AsyncIterator[ServiceProcess]:
    """``python -m strata.<name>`` with ``env`` added, SERVING for the body; on the port
    ``env`` sets (a restart where its clients already dial), else on a free one."""
    port = int(env.get(f"STRATA_SERVICE_{name.upper()}_PORT") or free_port())
    metrics_port = free_port()
    log = folder / f"{name}.log"
    environment = {
        **os.environ,
        f"STRATA_SERVICE_{name.upper()}_PORT": str(port),
        f"STRATA_SERVICE_{name.upper()}_METRICS_PORT": str(metrics_port),
        **env,
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"strata.{name}", env=environment, stderr=sink
        )
    address = f"127.0.0.1:{port}"
    try:
        async with asyncio.timeout(BOUND):
            while not await serving(address):
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
        yield ServiceProcess(address, metrics_port, log, process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()
