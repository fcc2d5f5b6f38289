"""The Strata side's processes: a scheduler, a provisioner and one agent.

Each is ``python -m strata.<name>`` as a user starts it, on free ports, with the
local stack's settings from the environment, so they use the services' own schemas
and topics: no other scheduler or provisioner may run on the same stack while the
benchmark does (their consumer groups would share the work). The benchmark's
workflows and agent get names of their own per run, so earlier runs' rows do not
get in the way. A bearer token made for the run is the only one the services accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.dispatch.workflows import TASK_CPU_MILLIS
from strata.api.provisioner.v1 import provisioner_pb2 as ppb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.core.settings import REPO_ROOT

BOUND = 60.0
"""Seconds a process may take to serve, an agent to register, a process to stop."""
GIB = 1024**3


@dataclass(frozen=True)
class Cluster:
    """Where the scheduler answers, and the token and node of this run."""

    scheduler: str
    provisioner: str
    token: str
    node_id: str
    logs: Path

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@contextlib.asynccontextmanager
async def cluster(folder: Path, slots: int) -> AsyncIterator[Cluster]:
    """The three services, SERVING and the agent registered, for the block."""
    run = uuid.uuid4().hex[:10]
    token = secrets.token_urlsafe(24)
    node_id = f"bench-{run}"
    common = {
        "STRATA_AUTH_TOKENS": json.dumps({token: {"principal": "bench", "roles": ["admin"]}}),
        "STRATA_AUTH_CLIENT_TOKEN": token,
        "STRATA_TELEMETRY_LOG_LEVEL": os.environ.get("STRATA_TELEMETRY_LOG_LEVEL", "WARNING"),
    }
    async with (
        _service("scheduler", folder, common) as scheduler,
        _service("provisioner", folder, common) as provisioner,
    ):
        agent = {
            **common,
            "STRATA_AGENT_PROVISIONER": provisioner,
            "STRATA_AGENT_NODE_ID": node_id,
            "STRATA_AGENT_CPU_MILLIS": str(slots * TASK_CPU_MILLIS),
            "STRATA_AGENT_MEMORY_BYTES": str(64 * GIB),
            # The workflows are applied without a bundle: workers import them from here.
            "PYTHONPATH": str(REPO_ROOT),
        }
        async with _service("agent", folder, agent):
            made = Cluster(scheduler, provisioner, token, node_id, folder)
            await _registered(made)
            yield made


@contextlib.asynccontextmanager
async def _service(name: str, folder: Path, env: dict[str, str]) -> AsyncIterator[str]:
    """``python -m strata.<name>`` on free ports, SERVING; SIGTERM on the way out."""
    port = _free_port()
    environment = {
        **os.environ,
        f"STRATA_SERVICE_{name.upper()}_PORT": str(port),
        f"STRATA_SERVICE_{name.upper()}_METRICS_PORT": str(_free_port()),
        **env,
    }
    log = folder / f"{name}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"strata.{name}", env=environment, stderr=sink
        )
    address = f"127.0.0.1:{port}"
    try:
        async with asyncio.timeout(BOUND):
            while not await _serving(address):
                if process.returncode is not None:
                    raise RuntimeError(f"strata.{name} exited: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.2)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _registered(made: Cluster) -> None:
    """Wait until the provisioner holds the agent's node as READY."""
    async with grpc.aio.insecure_channel(made.provisioner) as channel, asyncio.timeout(BOUND):
        stub = ProvisionerServiceStub(channel)
        while True:
            try:
                reply = await stub.GetNode(
                    ppb.GetNodeRequest(node_id=made.node_id), metadata=made.metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                if reply.node.state == ppb.NODE_STATE_READY:
                    return
            await asyncio.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
