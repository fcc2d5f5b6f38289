"""The process every Strata service runs: settings, gRPC, metrics, context, and a deadline.

``python -m strata.<name>`` calls :func:`run_service` with the service's spec:

1. every setting is loaded; a wrong one prints one line naming the variable and
   exits 2 before anything starts;
2. gRPC (the service's own, health, reflection) listens, NOT_SERVING, with the
   service's methods answering UNAVAILABLE; ``/metrics`` listens beside it;
3. once every dependency answers, the context is built (:mod:`.context`), the
   servicers are created from it, background tasks start under supervision
   (:mod:`.supervisor`) and health turns SERVING (:mod:`.health`);
4. on SIGTERM or SIGINT: NOT_SERVING, new calls refused; in-flight calls, the
   consumers (each finishes the record in hand and commits) and the background
   tasks wind down side by side; then the clients close. All of it within
   ``shutdown_grace`` seconds: past that the work is abandoned (what is durable
   is recovered by the next start) and the process exits anyway, even when
   something ignores cancellation or blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import signal
import sys
import threading
from collections.abc import Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, NoReturn

import grpc
import structlog
from prometheus_client import start_http_server

from strata.core import inbox
from strata.core.errors import ConfigError, UnreachableError
from strata.core.logging import configure_logging
from strata.core.metrics import Metrics
from strata.core.outbox import OutboxRelay
from strata.core.readiness import Probe, until_reachable
from strata.core.rpc.auth import check_auth_settings
from strata.core.rpc.metrics import measured_calls
from strata.core.rpc.server import RpcServer, Service
from strata.core.rpc.tls import server_credentials
from strata.core.rpc.tracing import traced_calls
from strata.core.runtime.context import ServiceContext, open_context
from strata.core.runtime.gate import LateService
from strata.core.runtime.health import Health, watch_dependencies
from strata.core.runtime.settings import RuntimeSettings
from strata.core.runtime.spec import ServiceSpec
from strata.core.runtime.supervisor import Supervisor, every
from strata.core.telemetry import configure_tracing

log = structlog.stdlib.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2

INBOX_PRUNE_EVERY = 3600.0
"""Seconds between two prunings of the inbox (``strata.core.inbox.prune``)."""
HARD_EXIT_MARGIN = 1.0
"""Seconds past the grace after which a watchdog thread ends the process outright."""


@dataclass(frozen=True)
class _Plan:
    """Everything checked before the process starts anything."""

    spec: ServiceSpec
    settings: RuntimeSettings
    port: int
    metrics_port: int
    gates: list[LateService]
    services: list[Service]
    credentials: grpc.ServerCredentials | None


def run_service(
    spec: ServiceSpec, *, port: int | None = None, metrics_port: int | None = None
) -> NoReturn:
    """Run ``spec`` until SIGTERM/SIGINT and exit the process (see the module doc).

    ``port`` and ``metrics_port`` default to ``STRATA_SERVICE_<NAME>_PORT`` and
    ``STRATA_SERVICE_<NAME>_METRICS_PORT``; 0 picks a free port.
    """
    try:
        plan = _plan(spec, port, metrics_port)
    except ConfigError as exc:
        print(f"strata.{spec.name} refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    configure_logging(spec.name, plan.settings.telemetry)
    configure_tracing(spec.name, plan.settings.telemetry)
    sys.exit(asyncio.run(_serve(plan)))


def _plan(spec: ServiceSpec, port: int | None, metrics_port: int | None) -> _Plan:
    """Load and check every setting, role list and certificate; ConfigError names the culprit."""
    settings = RuntimeSettings.load()
    service = settings.service
    check_auth_settings(settings.auth, settings.mode.mode)  # public token: development only
    gates = [LateService(endpoint.add) for endpoint in spec.endpoints]
    return _Plan(
        spec=spec,
        settings=settings,
        port=service.port_of(spec.name) if port is None else port,
        metrics_port=service.metrics_port_of(spec.name) if metrics_port is None else metrics_port,
        gates=gates,
        services=[  # Service checks its role list against the service's descriptor
            Service(gate.name, gate.add_to, endpoint.roles)
            for gate, endpoint in zip(gates, spec.endpoints, strict=True)
        ],
        credentials=server_credentials(settings.tls),
    )


async def _serve(plan: _Plan) -> int:
    spec, settings = plan.spec, plan.settings
    grace = settings.service.shutdown_grace
    stop = _StopRequest(grace)
    stop.install()
    metrics = Metrics()
    server = RpcServer(
        plan.services,
        settings.auth,
        layers=[traced_calls(), measured_calls(metrics)],
        credentials=plan.credentials,
        reflection=settings.mode.serves_reflection,
    )
    host = settings.service.host
    try:
        bound = await server.start(host, plan.port)
        exporter, _ = start_http_server(plan.metrics_port, host, registry=metrics.registry)
    except OSError as exc:
        log.error(f"cannot listen: {exc}")
        return EXIT_FAILED
    log.info("listening", address=f"{host}:{bound}", metrics=f"{host}:{exporter.server_port}")
    if plan.credentials is None and not _loopback(host):
        log.warning(
            "serving gRPC in plain text beyond loopback: bearer tokens cross the network "
            "readable; set STRATA_TLS_CERT_FILE and STRATA_TLS_KEY_FILE",
            address=host,
        )
    life = _Life(spec, settings, metrics, plan.gates, Health(server))
    body = asyncio.create_task(life.run(stop.event), name=f"{spec.name}: life")
    signalled = asyncio.create_task(stop.event.wait())
    await asyncio.wait([body, signalled], return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    stop.begin()
    try:
        return await _shut_down(server, life, body, stop.event, grace)
    finally:
        exporter.shutdown()
        exporter.server_close()


async def _shut_down(
    server: RpcServer, life: _Life, body: asyncio.Task[None], stopping: asyncio.Event, grace: float
) -> int:
    """In-flight calls get ``grace`` seconds while consumers and tasks wind down beside them.

    What is still running half a second past the grace is abandoned, named in a warning
    (where the stop was, which tasks still ran) and not waited for: a task that ignores
    its cancellation would hold a wait for it. The watchdog (:class:`_StopRequest`) ends
    the process a second past the grace, whatever happens.
    """
    log.info("stopping", grace=grace)
    stopping.set()
    ending = asyncio.gather(_drain(server, life, grace), _settled(body))
    await asyncio.wait([ending], timeout=grace + HARD_EXIT_MARGIN / 2)
    if not ending.done():
        log.warning(
            "shutdown grace passed: abandoning the work still in hand",
            grace=grace,
            stage=life.stage,
            pending=_pending_tasks(),
        )
        ending.cancel()
        return EXIT_OK
    try:
        ending.result()
    except Exception:
        log.exception("service failed")
        return EXIT_FAILED
    log.info("stopped")
    return EXIT_OK


async def _drain(server: RpcServer, life: _Life, grace: float) -> None:
    """Refuse new calls, give in-flight ones ``grace`` seconds, then let the context close."""
    try:
        await server.stop(grace)
    finally:
        life.calls_drained.set()


def _pending_tasks() -> list[str]:
    """The service's own tasks still running (those given a name: its life, its loops,
    its consumers), each with the coroutine it runs; clients' unnamed tasks are left out."""
    current = asyncio.current_task()
    return sorted(
        f"{task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')})"
        for task in asyncio.all_tasks()
        if task is not current and not task.get_name().startswith("Task-")
    )


async def _settled(body: asyncio.Task[None]) -> None:
    """Wait for the service's life to end; it re-raises what ended it early."""
    await body


class _Life:
    """From the first answer of every dependency to the closing of the context."""

    def __init__(
        self,
        spec: ServiceSpec,
        settings: RuntimeSettings,
        metrics: Metrics,
        late: Sequence[LateService],
        health: Health,
    ) -> None:
        self.spec, self.settings, self.metrics = spec, settings, metrics
        self.late, self.health = late, health
        self.calls_drained = asyncio.Event()
        """Set once the gRPC server stopped: no call needs the context any more."""
        self.stage = "starting"
        """Where the service's life is, named in the warning of a shutdown past its grace."""

    async def run(self, stopping: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            context = await self._open(stopping, stack)
            if context is None:
                return
            supervisor = Supervisor(self.metrics, self.health.tasks_down)
            try:
                self._open_endpoints(context)
                self._start_tasks(context, supervisor)
                await self.health.ready()
                self.stage = "serving"
                await stopping.wait()
            finally:
                await self._wind_down(context, supervisor)

    async def _wind_down(self, context: ServiceContext, supervisor: Supervisor) -> None:
        """Tasks and consumers stop while calls drain; the clients close after both.

        The consumers' stop is bounded by what is left of the grace: leaving a group
        waits on the broker, which holds a member that is joining until a dead member's
        session times out, and a service must stop on time whatever the broker does.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.service.shutdown_grace
        self.stage = "stopping tasks"
        await supervisor.stop()
        if self.spec.uses("Kafka"):
            self.stage = "stopping consumers"
            await context.bus.stop_consuming(within=max(deadline - loop.time(), 0.0))
        self.stage = "draining calls"
        await self.calls_drained.wait()
        for gate in self.late:
            gate.close()
        self.stage = "closing clients"

    async def _open(self, stopping: asyncio.Event, stack: AsyncExitStack) -> ServiceContext | None:
        """The context, once every dependency answered; None if stopped before that.

        A server that stops answering between its ping and the opening of its
        client sends the service back to waiting, not out of the process.
        """
        timeout = self.settings.service.ping_timeout
        probes = [
            Probe(dep, getattr(self.settings, _AREA[dep.component]), timeout)
            for dep in self.spec.dependencies
        ]
        while not stopping.is_set():
            await _until(stopping, until_reachable(probes))
            if stopping.is_set():
                break
            try:
                opening = open_context(self.spec, self.settings, self.metrics)
                context = await stack.enter_async_context(opening)
                return replace(context, _component_health=self.health.component)
            except UnreachableError as exc:
                log.warning(f"{exc}; waiting for it again", component=exc.component)
        return None

    def _open_endpoints(self, context: ServiceContext) -> None:
        for gate, endpoint in zip(self.late, self.spec.endpoints, strict=True):
            gate.open(endpoint.servicer(context))

    def _start_tasks(self, context: ServiceContext, supervisor: Supervisor) -> None:
        spec = self.spec
        supervisor.start(
            "dependency-watch",
            lambda: watch_dependencies(context, spec, self.health, self.metrics),
        )
        if spec.outbox:
            relay = OutboxRelay(
                context.pool, context.schema, context.bus.producer, metrics=self.metrics
            )
            supervisor.start("outbox-relay", relay.run)
        if spec.migrations:
            retention = timedelta(days=self.settings.service.inbox_retention_days)

            async def prune() -> None:
                await inbox.prune(context.pool, context.schema, retention)

            supervisor.start("inbox-prune", every(INBOX_PRUNE_EVERY, prune))
        for loop in spec.loops:
            work = functools.partial(loop.run, context)
            supervisor.start(loop.name, every(loop.every, work) if loop.every else work)


_AREA = {"Postgres": "postgres", "Kafka": "kafka", "Redis": "redis", "Blob store": "blobs"}
"""Which of the runtime's settings each dependency's one-off ping reads."""


async def _until(stopping: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` unless ``stopping`` is set first; re-raise what it raised."""
    task = asyncio.create_task(work)
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stop):
        pending.cancel()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _StopRequest:
    """SIGTERM or SIGINT: the first asks for a graceful stop, a second one insists.

    A plain signal handler rather than ``loop.add_signal_handler``: it runs even
    while something blocks the event loop, so the watchdog that keeps the promise
    to exit within the grace period starts whatever the loop is doing.
    """

    def __init__(self, grace: float) -> None:
        self.event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._grace = grace
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def begin(self) -> None:
        """Start the watchdog (once): past grace plus a margin the process ends."""
        if self._timer is None:
            self._timer = _watchdog(self._grace + HARD_EXIT_MARGIN)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._timer is not None:
            os._exit(EXIT_FAILED)
        self.begin()
        self._loop.call_soon_threadsafe(self.event.set)


def _watchdog(seconds: float) -> threading.Timer:
    """End the process after ``seconds`` whatever the event loop is doing."""

    def abandon() -> None:
        log.error("shutdown overran its deadline: exiting now", seconds=seconds)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_OK)

    timer = threading.Timer(seconds, abandon)
    timer.daemon = True
    timer.start()
    return timer
