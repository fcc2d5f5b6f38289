"""``python -m strata.registry``: the model registry, SERVING once Postgres, the blob
store and Kafka (for the outbox of alias and version events) answer.
"""

from strata.api.registry.v1.registry_pb2_grpc import add_ModelRegistryServiceServicer_to_server
from strata.core.runtime import BLOBS, KAFKA, POSTGRES, Endpoint, Loop, ServiceSpec, run_service
from strata.registry.api import ROLES, RegistryApi
from strata.registry.uploads import expire_uploads

SPEC = ServiceSpec(
    name="registry",
    requires=(POSTGRES, BLOBS, KAFKA),
    migrations="strata.registry.migrations",
    outbox=True,
    endpoints=(Endpoint(add_ModelRegistryServiceServicer_to_server, RegistryApi, ROLES),),
    loops=(Loop("expire-uploads", expire_uploads, every=30.0),),
)

if __name__ == "__main__":
    run_service(SPEC)
