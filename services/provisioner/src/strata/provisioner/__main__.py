"""``python -m strata.provisioner``: the provisioner, SERVING once Postgres and Kafka answer.

Agents connect with the ``agent`` role, people and tools read nodes and queues as
``viewer`` or ``developer``; every method not listed is open to ``admin`` only.
Requested attempts come in through :mod:`strata.provisioner.handlers`; a loop
places them (:mod:`strata.provisioner.placing`); the agents' Connect sessions
(:mod:`strata.provisioner.api`) send the assignments down; another loop declares
nodes past their lease lost (:mod:`strata.provisioner.node_loss`). With node
classes configured, the fleet loop (:mod:`strata.provisioner.fleet`) starts nodes
from their providers when attempts wait for room and stops them when idle. The
:class:`~strata.provisioner.wakeups.Wakeups` made here tie them together: a
queued attempt wakes the placement loop, a placement wakes its node's session.

A wrong ``STRATA_PROVISIONER_*`` setting refuses the start with one line naming it,
like the runtime's own settings; so does a node class larger than its provider
can give, naming the class.
"""

import functools
import sys

from strata.api.provisioner.v1.provisioner_pb2_grpc import add_ProvisionerServiceServicer_to_server
from strata.core.errors import ConfigError
from strata.core.runtime import KAFKA, POSTGRES, Endpoint, Loop, ServiceSpec, run_service
from strata.core.settings import ServiceSettings, load
from strata.provisioner.api import ProvisionerApi
from strata.provisioner.domain.sizing import SizingPolicy
from strata.provisioner.fleet import Fleet
from strata.provisioner.handlers import task_requests
from strata.provisioner.node_loss import watch_leases
from strata.provisioner.placing import placement_loop
from strata.provisioner.providers import ComputeProvider
from strata.provisioner.providers.local import LocalProvider
from strata.provisioner.settings import ProvisionerSettings
from strata.provisioner.wakeups import Wakeups

ROLES = {
    "Connect": ("agent",),
    "ListNodes": ("developer", "viewer"),
    "GetNode": ("developer", "viewer"),
    "GetQueue": ("developer", "viewer"),
    "ListQueues": ("developer", "viewer"),
    "ListNodeClasses": ("developer", "viewer"),
    "ListPlacements": ("developer", "viewer"),
}
EXIT_BAD_SETTINGS = 2
"""The runtime's exit code for a setting it refuses."""


def spec(settings: ProvisionerSettings, fleet: Fleet | None = None) -> ServiceSpec:
    """The provisioner, its parts sharing one :class:`Wakeups`; with ``fleet``, its loop."""
    wakeups = Wakeups()
    loops = [
        Loop(
            "place",
            placement_loop(
                wakeups,
                settings.placement_poll,
                settings.lease,
                fleet,
                SizingPolicy(memory_from=settings.reserve_memory_from),
            ),
        ),
        Loop("node-loss", watch_leases(settings.lease)),
    ]
    if fleet is not None:
        loops.append(Loop("fleet", fleet.loop()))
    return ServiceSpec(
        name="provisioner",
        requires=(POSTGRES, KAFKA),
        migrations="strata.provisioner.migrations",
        outbox=True,
        endpoints=(
            Endpoint(
                add_ProvisionerServiceServicer_to_server,
                functools.partial(
                    ProvisionerApi,
                    wakeups=wakeups,
                    delivery_poll=settings.delivery_poll,
                    lease=settings.lease,
                    fleet=fleet,
                ),
                ROLES,
            ),
        ),
        handlers=(task_requests(wakeups),),
        loops=tuple(loops),
    )


def fleet_of(settings: ProvisionerSettings, service: ServiceSettings) -> Fleet | None:
    """The fleet of the configured node classes, None without any; a class its provider
    cannot give refuses the start (``ConfigError`` naming the class)."""
    classes = list(settings.node_classes.values())
    if not classes:
        return None
    wanted = {c.provider for c in classes}
    providers: dict[str, ComputeProvider] = {}
    budgets = {}
    if "local" in wanted:
        host = service.host if service.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        providers["local"] = LocalProvider(
            budget=settings.local_budget,
            provisioner_address=settings.local_provisioner_address
            or f"{host}:{service.provisioner_port}",
            state_dir=settings.local_state_dir,
            agent_env=settings.local_agent_env,
        )
        budgets["local"] = settings.local_budget
    if "kubernetes" in wanted:
        # imported only when used: the Kubernetes client is slow to import
        from strata.provisioner.providers.kubernetes import KubernetesProvider

        providers["kubernetes"] = KubernetesProvider.from_settings(settings)
    return Fleet(classes, providers, settings.idle_after, settings.fleet_poll, budgets)


def main() -> None:
    try:
        settings = load(ProvisionerSettings)
        fleet = fleet_of(settings, load(ServiceSettings))
    except ConfigError as exc:
        print(f"strata.provisioner refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    run_service(spec(settings, fleet))


if __name__ == "__main__":
    main()
