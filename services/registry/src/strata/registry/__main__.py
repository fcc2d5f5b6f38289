"""``python -m strata.registry``: the model registry, SERVING once Postgres and the
blob store answer.
"""

from strata.core.runtime import BLOBS, POSTGRES, ServiceSpec, run_service

SPEC = ServiceSpec(name="registry", requires=(POSTGRES, BLOBS))

if __name__ == "__main__":
    run_service(SPEC)
