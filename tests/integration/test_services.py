"""Each service as its operators run it: ``python -m strata.<name>`` against the local stack.

A service reports SERVING over gRPC health once its dependencies answer, exits 0
within 5 s of SIGTERM, refuses to start on a wrong-typed setting with one line
naming the variable, and names an unreachable server and its address.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

SERVICES = ["scheduler", "provisioner", "agent", "streamer", "registry", "gateway"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BOUND = 60.0
"""Bound on waiting for a process to get somewhere: a guard against hanging, not a timing check."""
SIGTERM_EXIT = 5.0
"""What the issue promises: exit within 5 s of SIGTERM."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    """A service process, the port it serves on, and the file its log lines go to."""

    process: asyncio.subprocess.Process
    port: int
    log: Path

    async def health(self) -> int | None:
        """The overall health status, or None while nothing answers on the port."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                request = health_pb2.HealthCheckRequest(service="")
                reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=2.0)
            except grpc.aio.AioRpcError:
                return None
        status: int = reply.status
        return status

    async def until_health(self, wanted: int) -> None:
        async with asyncio.timeout(BOUND):
            while await self.health() != wanted:
                assert self.process.returncode is None, self.log.read_text()
                await asyncio.sleep(0.2)

    async def until_logged(self, text: str) -> dict[str, Any]:
        async with asyncio.timeout(BOUND):
            while True:
                for line in self.lines():
                    if text in line["event"]:
                        return line
                await asyncio.sleep(0.2)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    async def terminate(self) -> int:
        """SIGTERM, then the exit code, which must come within the promised 5 s."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), SIGTERM_EXIT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            pytest.fail(f"still running {SIGTERM_EXIT} s after SIGTERM:\n{self.log.read_text()}")


async def _start(name: str, folder: Path, **env: str) -> Running:
    port = _free_port()
    log = folder / f"{name}.log"
    environment = {
        **os.environ,
        f"STRATA_SERVICE_{name.upper()}_PORT": str(port),
        f"STRATA_SERVICE_{name.upper()}_METRICS_PORT": str(_free_port()),
        **env,
    }
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"strata.{name}", env=environment, stderr=sink
        )
    return Running(process, port, log)


@pytest.mark.parametrize(
    ("name", "env"),
    [*((name, {}) for name in SERVICES), ("registry", {"STRATA_BLOB_BACKEND": "s3"})],
    ids=[*SERVICES, "registry-on-s3"],
)
async def test_a_service_serves_health_and_exits_0_on_sigterm(
    name: str, env: dict[str, str], tmp_path: Path
) -> None:
    service = await _start(name, tmp_path, **env)
    try:
        await service.until_health(SERVING)
    finally:
        code = await service.terminate()
    assert code == 0, service.log.read_text()
    assert service.lines()[-1]["event"] == "stopped", service.log.read_text()
    assert _warned_of_the_public_token(service)
    assert {line["service"] for line in service.lines()} == {name}


async def test_a_wrong_typed_setting_refuses_to_start_naming_the_variable(tmp_path: Path) -> None:
    service = await _start("scheduler", tmp_path, STRATA_KAFKA_PORT="abc")
    async with asyncio.timeout(BOUND):
        code = await service.process.wait()
    error = service.log.read_text()
    assert code == 2
    assert "STRATA_KAFKA_PORT" in error
    assert "Traceback" not in error
    assert len(error.strip().splitlines()) == 1


async def test_an_unreachable_postgres_is_named_and_keeps_the_service_not_serving(
    tmp_path: Path,
) -> None:
    closed = _free_port()
    service = await _start("scheduler", tmp_path, STRATA_POSTGRES_PORT=str(closed))
    try:
        line = await service.until_logged("Postgres")
        assert f"127.0.0.1:{closed}" in line["event"]
        assert line["level"] == "warning"
        assert await service.health() == NOT_SERVING
    finally:
        code = await service.terminate()
    assert code == 0, service.log.read_text()


async def test_a_service_process_authenticates_and_authorises_every_call(tmp_path: Path) -> None:
    """Health stays open; a protected method needs a known token with a role allowed to call it."""
    tokens = {
        "admin-token": {"principal": "ops", "roles": ["admin"]},
        "viewer-token": {"principal": "dashboard", "roles": ["viewer"]},
    }
    service = await _start("scheduler", tmp_path, STRATA_AUTH_TOKENS=json.dumps(tokens))
    try:
        await service.until_health(SERVING)
        codes = {
            token: await _call_trigger_run(service.port, token)
            for token in (None, "not-a-token", "viewer-token", "admin-token")
        }
    finally:
        await service.terminate()
    assert not _warned_of_the_public_token(service)
    assert codes == {
        None: grpc.StatusCode.UNAUTHENTICATED,
        "not-a-token": grpc.StatusCode.UNAUTHENTICATED,
        "viewer-token": grpc.StatusCode.PERMISSION_DENIED,
        # Past authentication and authorisation: the empty request reaches the scheduler,
        # which refuses it for naming no workflow.
        "admin-token": grpc.StatusCode.INVALID_ARGUMENT,
    }


async def _call_trigger_run(port: int, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        trigger_run = channel.unary_unary("/strata.scheduler.v1.SchedulerService/TriggerRun")
        try:
            await trigger_run(b"", metadata=metadata, timeout=5.0)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _warned_of_the_public_token(service: Running) -> bool:
    return any("public local-stack token" in line["event"] for line in service.lines())
