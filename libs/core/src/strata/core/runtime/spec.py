"""What a service declares to the runtime: its dependencies, endpoints, handlers and loops.

A service is data, handed to :func:`strata.core.runtime.run_service`::

    SCHEDULER = ServiceSpec(
        name="scheduler",
        requires=(POSTGRES, KAFKA),
        migrations="strata.scheduler.migrations",
        outbox=True,
        endpoints=(Endpoint(add_SchedulerServiceServicer_to_server, SchedulerApi, ROLES),),
        handlers=(register_task_events,),
        loops=(Loop("fire-cron", fire_due_schedules, every=1.0),),
    )

Every factory takes the :class:`~strata.core.runtime.context.ServiceContext`, so
servicers, handlers and loops get the pool, the bus or the blob store from it,
never from module-level state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from strata.core.readiness import Dependency

if TYPE_CHECKING:
    from strata.core.runtime.context import ServiceContext

Roles = Mapping[str, Collection[str]]
"""Method name (``"GetModel"``) or ``"*"`` -> roles that may call it; ``admin`` may call all."""

AddServicer = Callable[[Any, grpc.aio.Server], None]
"""A generated ``add_<Name>Servicer_to_server`` function."""


@dataclass(frozen=True)
class Endpoint:
    """One gRPC service: the generated ``add_..._to_server``, a servicer factory, its roles.

    The servicer is built from the context once the service's dependencies answer;
    until then its methods answer UNAVAILABLE.
    """

    add: AddServicer
    servicer: Callable[[ServiceContext], object]
    roles: Roles = field(default_factory=dict)


@dataclass(frozen=True)
class Loop:
    """A background task run under supervision: restarted with backoff when it fails.

    With ``every`` set, ``run`` is one round, called again ``every`` seconds after
    the last round ended; without it, ``run`` is meant to run until cancelled.
    """

    name: str
    run: Callable[[ServiceContext], Awaitable[None]]
    every: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Loop.name must name the task, got an empty string")
        if self.every is not None and self.every <= 0:
            raise ValueError(
                f"Loop {self.name!r}: every must be positive seconds, got {self.every}"
            )


Handlers = Callable[["ServiceContext"], None]
"""Registers event handlers on ``context.bus`` (``context.bus.consumer(...).on(...)``)."""


@dataclass(frozen=True)
class ServiceSpec:
    """A Strata service as the runtime runs it.

    ``requires``: servers without which the service cannot answer; health is
    NOT_SERVING while one is down. ``degrades``: servers the service can answer
    without for a while (the gateway serves from memory while Kafka blips); all of
    them must answer once at start, since their clients are opened then, but later
    outages only log, count and degrade. ``migrations``: the package of the
    service's SQL files, applied to the schema ``name`` (Postgres required).
    ``outbox``: run the outbox relay of that schema (Postgres and Kafka required).
    """

    name: str
    requires: Sequence[Dependency[Any]] = ()
    degrades: Sequence[Dependency[Any]] = ()
    migrations: str | None = None
    outbox: bool = False
    endpoints: Sequence[Endpoint] = ()
    handlers: Sequence[Handlers] = ()
    loops: Sequence[Loop] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ServiceSpec.name must name the service, got an empty string")
        components = [d.component for d in self.dependencies]
        if len(set(components)) != len(components):
            raise ValueError(f"service {self.name!r}: a dependency is listed twice: {components}")
        needs = {
            "migrations": ("Postgres",),
            "outbox": ("Postgres", "Kafka"),
            "handlers": ("Kafka",),
        }
        for what, servers in needs.items():
            if getattr(self, what) and not set(servers) <= set(components):
                raise ValueError(
                    f"service {self.name!r}: {what} need {' and '.join(servers)} "
                    "in requires or degrades"
                )

    @property
    def dependencies(self) -> tuple[Dependency[Any], ...]:
        return (*self.requires, *self.degrades)

    def uses(self, component: str) -> bool:
        return any(d.component == component for d in self.dependencies)
