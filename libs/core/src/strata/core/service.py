"""The process every Strata service runs: settings, logs, gRPC, health, and a clean exit.

``python -m strata.<name>`` calls :func:`run_service`, which

1. loads every setting the service needs; a wrong one prints one line naming the
   variable and exits 2, before anything starts;
2. serves gRPC (the service's own, health and reflection) on
   ``STRATA_SERVICE_HOST:STRATA_SERVICE_<NAME>_PORT``, NOT_SERVING at first;
3. pings each dependency until it answers (one warning line per failure, naming
   the server and its address, then a longer wait), enters the service's lifespan
   and reports SERVING; pings again every ``health_interval`` and reports
   NOT_SERVING while a dependency is down;
4. on SIGTERM or SIGINT reports NOT_SERVING, stops taking calls, gives in-flight
   ones ``shutdown_grace`` seconds, leaves the lifespan and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from strata.core.errors import ConfigError
from strata.core.logging import configure_logging
from strata.core.readiness import (
    BLOBS,
    KAFKA,
    POSTGRES,
    REDIS,
    Dependency,
    Lifespan,
    Probe,
    keep_health,
)
from strata.core.rpc.auth import TokenBook
from strata.core.rpc.server import RpcServer, Service
from strata.core.settings import AuthSettings, ServiceSettings, TelemetrySettings, load
from strata.core.telemetry import configure_tracing, server_interceptor

__all__ = ["BLOBS", "KAFKA", "POSTGRES", "REDIS", "Dependency", "Lifespan", "run_service"]

log = structlog.stdlib.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2


@dataclass(frozen=True)
class _Config:
    service: ServiceSettings
    auth: AuthSettings
    telemetry: TelemetrySettings
    probes: list[Probe]


def run_service(
    name: str,
    dependencies: Sequence[Dependency[Any]],
    services: Callable[[], Sequence[Service]] | None = None,
    lifespan: Lifespan | None = None,
) -> NoReturn:
    """Run service ``name`` until SIGTERM/SIGINT and exit the process (see module doc).

    ``services`` builds the gRPC services to serve; it runs after the settings are
    checked, so a servicer may ``load()`` its own and get the same one-line refusal.
    """
    try:
        config = _load(name, dependencies)
        rpc_services = services() if services else ()
    except ConfigError as exc:
        print(f"strata.{name} refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    configure_logging(name, config.telemetry)
    configure_tracing(name, config.telemetry)
    sys.exit(asyncio.run(_serve(name, config, rpc_services, lifespan or nullcontext)))


def _load(name: str, dependencies: Sequence[Dependency[Any]]) -> _Config:
    service = load(ServiceSettings)
    service.port_of(name)
    auth = load(AuthSettings)
    TokenBook.from_settings(auth)  # a malformed token entry refuses the start here, too
    return _Config(
        service=service,
        auth=auth,
        telemetry=load(TelemetrySettings),
        probes=[Probe(dep, load(dep.settings), service.ping_timeout) for dep in dependencies],
    )


async def _serve(
    name: str, config: _Config, services: Sequence[Service], lifespan: Lifespan
) -> int:
    host, port = config.service.host, config.service.port_of(name)
    server = RpcServer(services, config.auth, interceptors=[server_interceptor()])
    try:
        await server.start(host, port)
    except OSError as exc:
        log.error(str(exc))
        return EXIT_FAILED
    log.info("listening", address=f"{host}:{port}")
    interval = config.service.health_interval
    body = asyncio.create_task(keep_health(server, config.probes, interval, lifespan))
    stop = asyncio.create_task(_stop_signal().wait())
    await asyncio.wait([body, stop], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping", grace=config.service.shutdown_grace)
    await server.stop(config.service.shutdown_grace)
    for task in (body, stop):
        task.cancel()
    failure, _ = await asyncio.gather(body, stop, return_exceptions=True)
    if isinstance(failure, Exception):
        log.error("service failed", exc_info=failure)
        return EXIT_FAILED
    log.info("stopped")
    return EXIT_OK


def _stop_signal() -> asyncio.Event:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping
