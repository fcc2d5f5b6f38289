"""``python -m strata.registry``: the model registry, SERVING once Postgres and blobs answer."""

from strata.core.service import BLOBS, POSTGRES, run_service

if __name__ == "__main__":
    run_service("registry", dependencies=[POSTGRES, BLOBS])
