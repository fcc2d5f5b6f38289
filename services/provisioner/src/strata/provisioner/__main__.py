"""``python -m strata.provisioner``: the provisioner, SERVING once Postgres and Kafka answer.

Agents connect with the ``agent`` role, people and tools read nodes and queues as
``viewer`` or ``developer``; every method not listed is open to ``admin`` only.
Requested attempts come in through :mod:`strata.provisioner.handlers`; a loop
places them (:mod:`strata.provisioner.placing`); the agents' Connect sessions
(:mod:`strata.provisioner.api`) send the assignments down; another loop declares
nodes past their lease lost (:mod:`strata.provisioner.node_loss`). The
:class:`~strata.provisioner.wakeups.Wakeups` made here tie them together: a
queued attempt wakes the placement loop, a placement wakes its node's session.

A wrong ``STRATA_PROVISIONER_*`` setting refuses the start with one line naming it,
like the runtime's own settings.
"""

import functools
import sys
from collections.abc import Callable

from strata.api.provisioner.v1.provisioner_pb2_grpc import add_ProvisionerServiceServicer_to_server
from strata.core.errors import ConfigError
from strata.core.runtime import KAFKA, POSTGRES, Endpoint, Loop, ServiceSpec, run_service
from strata.core.settings import load
from strata.provisioner.api import ProvisionerApi
from strata.provisioner.handlers import task_requests
from strata.provisioner.node_loss import watch_leases
from strata.provisioner.placing import placement_loop
from strata.provisioner.settings import ProvisionerSettings
from strata.provisioner.wakeups import Wakeups

ROLES = {
    "Connect": ("agent",),
    "ListNodes": ("developer", "viewer"),
    "GetNode": ("developer", "viewer"),
    "GetQueue": ("developer", "viewer"),
}
servicer: Callable[..., ProvisionerApi] = ProvisionerApi
"""The servicer's class as a factory (its generated base declares the methods not written
yet abstract; they answer UNIMPLEMENTED)."""
EXIT_BAD_SETTINGS = 2
"""The runtime's exit code for a setting it refuses."""


def spec(settings: ProvisionerSettings) -> ServiceSpec:
    """The provisioner, its parts sharing one :class:`Wakeups`."""
    wakeups = Wakeups()
    return ServiceSpec(
        name="provisioner",
        requires=(POSTGRES, KAFKA),
        migrations="strata.provisioner.migrations",
        outbox=True,
        endpoints=(
            Endpoint(
                add_ProvisionerServiceServicer_to_server,
                functools.partial(
                    servicer,
                    wakeups=wakeups,
                    delivery_poll=settings.delivery_poll,
                    lease=settings.lease,
                ),
                ROLES,
            ),
        ),
        handlers=(task_requests(wakeups),),
        loops=(
            Loop("place", placement_loop(wakeups, settings.placement_poll, settings.lease)),
            Loop("node-loss", watch_leases(settings.lease)),
        ),
    )


def main() -> None:
    try:
        settings = load(ProvisionerSettings)
    except ConfigError as exc:
        print(f"strata.provisioner refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    run_service(spec(settings))


if __name__ == "__main__":
    main()
