"""``python -m strata.provisioner``: the provisioner, SERVING once Postgres and Kafka answer."""

from strata.core.service import KAFKA, POSTGRES, run_service

if __name__ == "__main__":
    run_service("provisioner", dependencies=[POSTGRES, KAFKA])
