"""``python -m strata.provisioner``: the provisioner, SERVING once Postgres and Kafka answer.

Agents connect with the ``agent`` role, people and tools read nodes and queues as
``viewer`` or ``developer``; every method not listed is open to ``admin`` only.
Requested attempts come in through :mod:`strata.provisioner.handlers`; a loop
places them (:mod:`strata.provisioner.placing`); the agents' Connect sessions
(:mod:`strata.provisioner.api`) send the assignments down; another loop declares
nodes past their lease lost (:mod:`strata.provisioner.node_loss`).
"""

from strata.api.provisioner.v1.provisioner_pb2_grpc import add_ProvisionerServiceServicer_to_server
from strata.core.runtime import KAFKA, POSTGRES, Endpoint, Loop, ServiceSpec, run_service
from strata.provisioner.api import ProvisionerApi
from strata.provisioner.handlers import register_task_requests
from strata.provisioner.node_loss import watch_leases
from strata.provisioner.placing import place_queued

ROLES = {
    "Connect": ("agent",),
    "ListNodes": ("developer", "viewer"),
    "GetNode": ("developer", "viewer"),
    "GetQueue": ("developer", "viewer"),
}

SPEC = ServiceSpec(
    name="provisioner",
    requires=(POSTGRES, KAFKA),
    migrations="strata.provisioner.migrations",
    outbox=True,
    endpoints=(Endpoint(add_ProvisionerServiceServicer_to_server, ProvisionerApi, ROLES),),
    handlers=(register_task_requests,),
    loops=(Loop("place", place_queued, every=0.2), Loop("node-loss", watch_leases)),
)

if __name__ == "__main__":
    run_service(SPEC)
