"""The service's gRPC health, from its readiness, its dependencies and its background tasks.

SERVING means: the context is built, every *required* dependency answers and no
supervised task is down. A *degrading* dependency that stops answering is logged
and shows in ``strata_dependency_up`` but leaves the service SERVING: it answers
what it can without it. A part of the service that can fail alone (one provider of
compute) reports under a health name of its own (:meth:`Health.component`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from strata.core.metrics import Metrics
from strata.core.rpc.server import RpcServer
from strata.core.runtime.context import ServiceContext
from strata.core.runtime.spec import ServiceSpec

log = structlog.stdlib.get_logger(__name__)


class Health:
    """Combines what health depends on and reports it to the gRPC health service."""

    def __init__(self, server: RpcServer) -> None:
        self._server = server
        self._ready = False
        self._deps_down: frozenset[str] = frozenset()
        self._tasks_down: frozenset[str] = frozenset()
        self._serving: bool | None = None

    @property
    def serving(self) -> bool:
        return self._ready and not self._deps_down and not self._tasks_down

    async def ready(self) -> None:
        self._ready = True
        await self._report()

    async def dependencies_down(self, components: frozenset[str]) -> None:
        self._deps_down = components
        await self._report()

    async def tasks_down(self, tasks: frozenset[str]) -> None:
        self._tasks_down = tasks
        await self._report()

    async def component(self, name: str, serving: bool) -> None:
        """One part of the service (a provider of compute, say) under its own health name:
        clients that need that part ask for it; the service's own health is unchanged."""
        await self._server.set_component(name, serving)

    async def _report(self) -> None:
        serving = self.serving
        if serving == self._serving:
            return
        self._serving = serving
        await self._server.set_serving(serving)
        if serving:
            log.info("serving")
        else:
            log.warning(
                "not serving",
                dependencies_down=sorted(self._deps_down),
                tasks_down=sorted(self._tasks_down),
            )


async def watch_dependencies(
    context: ServiceContext, spec: ServiceSpec, health: Health, metrics: Metrics
) -> None:
    """Ping every dependency through the service's clients each ``health_interval``."""
    service = context.settings.service
    required = {d.component for d in spec.requires}
    components = [d.component for d in spec.dependencies]
    for component in components:
        metrics.dependency_up.labels(dependency=component).set(1)
    while True:
        await asyncio.sleep(service.health_interval)
        failed = await _failed_pings(context, components, service.ping_timeout)
        for component in components:
            metrics.dependency_up.labels(dependency=component).set(component not in failed)
        for component, error in failed.items():
            degraded = "" if component in required else " (degraded: still serving)"
            log.warning(f"{error}{degraded}", component=component)
        await health.dependencies_down(frozenset(failed.keys() & required))


async def _failed_pings(
    context: ServiceContext, components: Sequence[str], timeout: float
) -> dict[str, str]:
    results = await asyncio.gather(
        *(context.ping(c, timeout) for c in components), return_exceptions=True
    )
    return {
        c: str(r) or repr(r)
        for c, r in zip(components, results, strict=True)
        if isinstance(r, Exception)
    }
