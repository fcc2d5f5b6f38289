"""``python -m strata.provisioner``: the provisioner, SERVING once Postgres and Kafka answer."""

from strata.core.runtime import KAFKA, POSTGRES, ServiceSpec, run_service

SPEC = ServiceSpec(name="provisioner", requires=(POSTGRES, KAFKA))

if __name__ == "__main__":
    run_service(SPEC)
