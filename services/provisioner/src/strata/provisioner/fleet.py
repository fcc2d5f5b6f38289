"""The fleet: nodes started from providers of compute when attempts wait for room, drained
and stopped when idle, and declared lost at once when their provider says they are gone.

One loop (in one provisioner process at a time: it holds a Postgres advisory lock)
looks every ``fleet_poll`` seconds. A round asks each provider whether it serves
and what it sees, declares lost the nodes a serving provider reports gone (or no
longer knows) with the same ``NodeLost``/``TaskLost`` as a lapsed lease, so their
attempts are retried elsewhere now rather than a lease later; then
:func:`strata.provisioner.domain.scaling.plan_scaling` says what to start, drain and
stop. A provider that fails its check is reported (log, gRPC health NOT_SERVING under
``strata.provisioner.provider.<name>``, the ``strata_dependency_up{dependency="provider
<name>"}`` gauge, ``ListNodeClasses`` with the address and why) and left out of the
round; the other providers keep working.

A node to scale down is first drained, only while it has no placement, through
the same path as ``DrainNode`` (:mod:`strata.provisioner.draining`: under the
placement round's lock, so no round places on it after; placement skips every
node that is not READY); only then is it stopped, and its node row dropped, since
it ran nothing. A node with placements is never drained by the fleet; one drained
by an operator (or whose agent is leaving) is stopped once it has none left.

Everything the fleet knows lives in Postgres (``provisioned_nodes``), except what
a provider keeps itself (the local provider's processes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import structlog

from strata.api.common.v1.resources_pb2 import Resources as ResourcesMessage
from strata.api.provisioner.v1.provisioner_pb2 import NodeClass
from strata.core.errors import ConfigError
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.draining import Drain, NodeGoneError
from strata.provisioner.domain.resources import Resources
from strata.provisioner.domain.scaling import FleetNode, ScalingPlan, plan_scaling
from strata.provisioner.draining import Drains
from strata.provisioner.fleet_store import FleetStore, ProvisionedNode
from strata.provisioner.node_loss import declare_lost
from strata.provisioner.providers import ComputeProvider, NodeClassSpec, NodePhase, ObservedNode

log = structlog.stdlib.get_logger(__name__)

START_BACKOFF = timedelta(seconds=30)
"""How long a class whose node could not be started is not tried again: a provider
refusing a node is shown, not hammered."""

SCALED_DOWN = Drain("idle: the fleet scales the node down", shutdown_when_empty=True)


def provider_health_name(provider: str) -> str:
    """The gRPC health name a provider reports under: NOT_SERVING while it fails its
    check, the provisioner itself (and its other providers) serving on."""
    return f"strata.provisioner.provider.{provider}"


def check_classes(
    classes: Sequence[NodeClassSpec], providers: Mapping[str, ComputeProvider]
) -> None:
    """Refuse (``ConfigError`` naming the class) a class whose provider is not set up or
    cannot give a node that large."""
    for node_class in classes:
        provider = providers.get(node_class.provider)
        if provider is None:
            raise ConfigError(
                f"node class {node_class.name!r}: provider {node_class.provider!r} is not set up"
            )
        largest = provider.largest()
        if largest is not None and not node_class.capacity.fits_in(largest):
            raise ConfigError(
                f"node class {node_class.name!r} ({node_class.capacity}) is larger than "
                f"provider {provider.name!r} can give ({largest})"
            )


class Fleet:
    """The node classes, their providers and the loop that scales them."""

    def __init__(
        self,
        classes: Sequence[NodeClassSpec],
        providers: Mapping[str, ComputeProvider],
        idle_after: timedelta,
        poll: float,
        budgets: Mapping[str, Resources] | None = None,
    ) -> None:
        check_classes(classes, providers)
        self._classes = tuple(classes)
        self._providers = dict(providers)
        self._idle_after = idle_after
        self._poll = poll
        self._budgets = dict(budgets or {})
        self._store: FleetStore | None = None
        self._context: ServiceContext | None = None
        self._down: dict[str, str] = {}
        """Providers failing their check, with why."""
        self._refused: dict[str, tuple[datetime, str]] = {}
        """Classes whose last start failed: when, and why."""

    @property
    def classes(self) -> tuple[NodeClassSpec, ...]:
        return self._classes

    def largest_memory_bytes(self) -> int:
        """Memory of the largest node a class offers; 0 with no class."""
        return max((c.capacity.memory_bytes for c in self._classes), default=0)

    def provider_down(self, name: str) -> str | None:
        """Why provider ``name`` does not serve, or None while it does."""
        return self._down.get(name)

    async def describe(self) -> list[NodeClass]:
        """Each class with its nodes starting and connected, and its provider's word."""
        nodes = await self._store.provisioned() if self._store is not None else []
        described = []
        for c in sorted(self._classes, key=lambda c: c.name):
            mine = [n for n in nodes if n.node_class == c.name]
            down = self._down.get(c.provider)
            described.append(
                NodeClass(
                    name=c.name,
                    provider=c.provider,
                    capacity=ResourcesMessage(
                        cpu_millis=c.capacity.cpu_millis,
                        memory_bytes=c.capacity.memory_bytes,
                        gpus=c.capacity.gpus,
                    ),
                    min_nodes=c.min_nodes,
                    max_nodes=c.max_nodes,
                    starting=sum(1 for n in mine if not n.connected),
                    connected=sum(1 for n in mine if n.connected),
                    provider_serving=down is None,
                    message=down or self._class_message(c.name, mine),
                )
            )
        return described

    def _class_message(self, name: str, nodes: Sequence[ProvisionedNode]) -> str:
        refused = self._refused.get(name)
        if refused is not None:
            return refused[1]
        return next((n.message for n in nodes if not n.connected and n.message), "")

    def loop(self) -> Callable[[ServiceContext], Awaitable[None]]:
        """The fleet loop, until cancelled; on cancellation the providers are closed."""

        async def run(context: ServiceContext) -> None:
            self.bind(context)
            async with context.pool.acquire() as conn:
                key = f"{context.schema}.fleet"
                while True:  # one fleet loop per schema: a standby waits for the lock
                    if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                        break
                    await asyncio.sleep(self._poll)
                try:
                    while True:
                        await self.round(datetime.now(UTC))
                        await asyncio.sleep(self._poll)
                except asyncio.CancelledError:
                    await self.close()
                    raise

        return run

    def bind(self, context: ServiceContext) -> None:
        """Use ``context``'s pool, outbox and metrics from now on."""
        self._context = context
        self._store = FleetStore(context.pool, context.schema)

    async def close(self) -> None:
        for provider in self._providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing a provider failed", provider=provider.name)

    async def round(self, now: datetime) -> ScalingPlan:
        """Check the providers, declare gone nodes lost, then start, drain and stop."""
        store = self._need_store()
        observed = await self._observe()
        for node in await store.provisioned():
            if node.provider in observed:
                await self._reconcile(node, observed[node.provider].get(node.node_id), now)
        await store.mark_idle(now)
        nodes = await store.provisioned()
        serving = [
            c
            for c in self._classes
            if c.provider not in self._down and not self._backing_off(c.name, now)
        ]
        plan = plan_scaling(
            serving,
            [_fleet_node(n) for n in nodes],
            await store.waiting_for_room(),
            now,
            self._idle_after,
            self._budgets,
        )
        by_id = {n.node_id: n for n in nodes}
        for class_name in plan.start:
            await self._start(next(c for c in self._classes if c.name == class_name), now)
        for node_id in plan.drain:
            await self._drain(by_id[node_id])
        for node_id in plan.stop:
            await self._retire(by_id[node_id])
        return plan

    def _need_store(self) -> FleetStore:
        if self._store is None:
            raise RuntimeError("Fleet.round before Fleet.bind: the fleet has no database yet")
        return self._store

    async def _observe(self) -> dict[str, dict[str, ObservedNode]]:
        """What each serving provider sees, by node id; failing ones are marked down."""
        observed: dict[str, dict[str, ObservedNode]] = {}
        for name, provider in self._providers.items():
            try:
                reason = await provider.check()
                if reason is None:
                    observed[name] = {o.node_id: o for o in await provider.observe()}
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            await self._serving(name, reason)
        return observed

    async def _serving(self, name: str, reason: str | None) -> None:
        was = self._down.get(name)
        if reason is None:
            self._down.pop(name, None)
            if was is not None:
                log.info("provider serving again", provider=name)
        else:
            self._down[name] = reason
            if was != reason:
                log.warning("provider not serving", provider=name, reason=reason)
        if self._context is not None:
            gauge = self._context.metrics.dependency_up.labels(dependency=f"provider {name}")
            gauge.set(reason is None)
            await self._context.component_health(provider_health_name(name), reason is None)

    async def _reconcile(
        self, node: ProvisionedNode, seen: ObservedNode | None, now: datetime
    ) -> None:
        """Declare the node lost if its provider reports it gone or no longer knows it;
        else keep the provider's word on it."""
        store = self._need_store()
        if seen is not None and seen.phase is not NodePhase.GONE:
            await store.said(node.node_id, seen.message)
            return
        why = seen.message if seen is not None and seen.message else "its provider lost it"
        reason = f"provider {node.provider}: node {node.node_id} is gone: {why}"
        context = self._need_context()
        async with context.pool.acquire() as conn, conn.transaction():
            last_seen_at = await store.lock_unlost(conn, node.node_id)
            if last_seen_at is not None:
                await declare_lost(context, conn, node.node_id, reason, last_seen_at, now)
        await store.forget(node.node_id)
        await self._providers[node.provider].stop(node.node_id)
        log.warning("provisioned node gone", node_id=node.node_id, reason=reason)

    def _need_context(self) -> ServiceContext:
        if self._context is None:
            raise RuntimeError("the fleet is not bound to a service context")
        return self._context

    def _backing_off(self, class_name: str, now: datetime) -> bool:
        refused = self._refused.get(class_name)
        return refused is not None and now - refused[0] < START_BACKOFF

    async def _start(self, node_class: NodeClassSpec, now: datetime) -> None:
        store = self._need_store()
        node_id = f"{node_class.name}-{uuid.uuid4().hex[:10]}"
        await store.requested(node_id, node_class.name, node_class.provider, now)
        try:
            await self._providers[node_class.provider].start(node_id, node_class)
        except Exception as exc:
            await store.forget(node_id)
            message = f"could not start a {node_class.name} node: {type(exc).__name__}: {exc}"
            self._refused[node_class.name] = (now, message)
            log.exception("node start failed", node_class=node_class.name, node_id=node_id)
            return
        self._refused.pop(node_class.name, None)
        log.info("node requested", node_id=node_id, node_class=node_class.name)

    async def _drain(self, node: ProvisionedNode) -> None:
        """Drain then stop an idle node; one that got a placement meanwhile is left."""
        if node.connected:
            drains = Drains(self._need_context())
            try:
                if await drains.drain(node.node_id, SCALED_DOWN, only_if_idle=True) is None:
                    return
            except NodeGoneError:  # its stream closed meanwhile: its lease decides
                return
        log.info("draining idle node", node_id=node.node_id, node_class=node.node_class)
        await self._retire(node)

    async def _retire(self, node: ProvisionedNode) -> None:
        await self._providers[node.provider].stop(node.node_id)
        await self._need_store().retire(node.node_id)
        log.info("node stopped", node_id=node.node_id, node_class=node.node_class)


def _fleet_node(node: ProvisionedNode) -> FleetNode:
    return FleetNode(
        node_id=node.node_id,
        node_class=node.node_class,
        connected=node.connected,
        placements=node.placements,
        draining=node.draining,
        idle_since=node.idle_since,
    )
