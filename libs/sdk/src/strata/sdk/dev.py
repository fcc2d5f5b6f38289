"""``strata dev``: the local stack and the six services in the foreground, with their logs.

What ``dagster dev`` or ``airflow standalone`` give their users: one command, every
part running, every log line in one terminal, prefixed with the service it came
from. Ctrl-C (or SIGTERM) stops the services with SIGTERM, each within its shutdown
grace (then SIGKILL for its whole process group, worker processes included), and
stops the stack's servers that ``dev`` started itself; servers that were already
running are left as they were. A service that exits on its own ends ``dev`` too,
with exit code 1 and its name: a half-running platform is worse than none.

Each service runs in a session of its own, so the terminal's Ctrl-C reaches ``dev``
alone and the services are stopped in order, not all interrupted mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.text import Text

from strata.core.settings import ServiceSettings, load

if TYPE_CHECKING:
    from strata.sdk.stack.server import Server

SERVICES = ("registry", "streamer", "scheduler", "provisioner", "gateway", "agent")
"""Started together; listed so that the services others call come first in the output."""

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")

KILL_AFTER = 5.0
"""Seconds past a service's own shutdown grace before its process group is killed."""

READY_BOUND = 120.0
"""Seconds the services get to report SERVING before ``dev`` gives up on them."""


def child_environment(base: Mapping[str, str], services: ServiceSettings) -> dict[str, str]:
    """What each service runs with: ``base``, plus development defaults it did not set.

    Development mode (the local stack's public token), readable console logs, and the
    addresses the gateway, the registry and the agent dial derived from the service ports, so that
    moving a port with ``STRATA_SERVICE_<NAME>_PORT`` moves its clients too. The agent
    needs no code folder: it runs the bundle ``strata workflow apply`` stored in the
    blob store, which the services and the CLI reach through the same settings.
    """
    host = services.host
    defaults = {
        "STRATA_MODE": "development",
        "STRATA_TELEMETRY_LOG_FORMAT": "console",
        "STRATA_AGENT_PROVISIONER": f"{host}:{services.provisioner_port}",
        "STRATA_GATEWAY_REGISTRY": f"{host}:{services.registry_port}",
        "STRATA_GATEWAY_STREAMER": f"{host}:{services.streamer_port}",
        "STRATA_REGISTRY_SCHEDULER": f"{host}:{services.scheduler_port}",
    }
    return {**defaults, **base}


@dataclass
class Service:
    """One running service process and where its health answers."""

    name: str
    address: str
    process: asyncio.subprocess.Process
    colour: str


def main(out: Console) -> int:
    """Bring the stack up, run the services, and stop the stack's servers ``dev`` started."""
    from strata.sdk.stack import commands

    already = {server.name for server in commands.servers() if server.running_pid()}
    try:
        code = commands.run("up")
        if code == 0:
            code = asyncio.run(run(out))
    finally:
        started = [server for server in commands.servers() if server.name not in already]
        if started:
            with commands.exclusive(commands.stack_home()):
                asyncio.run(stop_servers(started))
    return code


async def stop_servers(servers: list[Server]) -> None:
    from strata.sdk.stack.commands import bring_down

    await asyncio.gather(*(bring_down(server) for server in servers))


async def run(out: Console) -> int:
    """Run every service until interrupted or until one exits; the exit code of ``dev``."""
    settings = load(ServiceSettings)
    environment = child_environment(os.environ, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    services = [
        await _start(name, f"{settings.host}:{settings.port_of(name)}", colour, environment)
        for name, colour in zip(SERVICES, COLOURS, strict=True)
    ]
    printers = [asyncio.create_task(_print_lines(service, out)) for service in services]
    code = await _supervise(services, stop, out)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: _kill_all(services))
    await stop_all(services, settings.shutdown_grace + KILL_AFTER, out)
    await asyncio.gather(*printers, return_exceptions=True)
    return code


async def _start(name: str, address: str, colour: str, environment: Mapping[str, str]) -> Service:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"strata.{name}",
        env=dict(environment),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    return Service(name, address, process, colour)


async def _print_lines(service: Service, out: Console) -> None:
    """Every line the service writes, behind its name in its colour."""
    assert service.process.stdout is not None
    width = max(len(name) for name in SERVICES)
    async for raw in service.process.stdout:
        line = Text(f"{service.name:<{width}} │ ", style=service.colour)
        line.append(raw.decode(errors="replace").rstrip())
        out.print(line, soft_wrap=True, highlight=False)


async def _supervise(services: list[Service], stop: asyncio.Event, out: Console) -> int:
    """Announce the services once SERVING; 0 when stopped by a signal, 1 when one exits
    or some are not SERVING within ``READY_BOUND``."""
    ready = asyncio.create_task(_all_serving(services, out))
    exits = {asyncio.create_task(s.process.wait()): s for s in services}
    stopped = asyncio.create_task(stop.wait())
    watched: set[asyncio.Task[Any]] = {ready, stopped, *exits}
    while True:
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if done != {ready} or ready.exception() is not None:
            break
        watched.discard(ready)
    for task in watched:
        task.cancel()
    ended = [exits[task] for task in done if task in exits]
    for service in ended:
        out.print(
            f"{service.name} exited with code {service.process.returncode}; stopping everything",
            style="bold red",
        )
    late = ready in done and ready.exception() is not None
    return 1 if ended or late else 0


async def _all_serving(services: list[Service], out: Console) -> None:
    """Each service's address once it is SERVING, then one line once all are."""
    waits = [asyncio.create_task(_announce_when_serving(s, out)) for s in services]
    try:
        async with asyncio.timeout(READY_BOUND):
            await asyncio.gather(*waits)
    except TimeoutError:
        late = [s.name for s, wait in zip(services, waits, strict=True) if not wait.done()]
        out.print(
            f"{', '.join(late)} not SERVING after {READY_BOUND:.0f}s (see their lines above); "
            "stopping everything",
            style="bold red",
        )
        raise
    out.print("Strata is up: every service is SERVING. Ctrl-C stops everything.", style="bold")


async def _announce_when_serving(service: Service, out: Console) -> None:
    while True:
        if await serving(service.address):
            break
        await asyncio.sleep(0.25)
    out.print(
        f"{service.name} serving on {service.address} (pid {service.process.pid})",
        style=f"bold {service.colour}",
    )


async def serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def stop_all(services: list[Service], bound: float, out: Console) -> None:
    """SIGTERM every running service, wait ``bound`` seconds, then kill what is left."""
    running = [s for s in services if s.process.returncode is None]
    for service in reversed(running):
        with contextlib.suppress(ProcessLookupError):
            service.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(bound):
            await asyncio.gather(*(s.process.wait() for s in running))
    except TimeoutError:
        late = [s.name for s in running if s.process.returncode is None]
        out.print(f"killing {', '.join(late)}: still running {bound:.0f}s after SIGTERM")
    _kill_all(services)
    await asyncio.gather(*(s.process.wait() for s in services))


def _kill_all(services: list[Service]) -> None:
    """SIGKILL each service's process group: the service and any worker it started."""
    for service in services:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.process.pid, signal.SIGKILL)
