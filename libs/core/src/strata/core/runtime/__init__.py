"""The service runtime: every Strata service is a :class:`ServiceSpec` run by :func:`run_service`.

>>> SCHEDULER = ServiceSpec(name="scheduler", requires=(POSTGRES, KAFKA),
...                         migrations="strata.scheduler.migrations", outbox=True,
...                         endpoints=(Endpoint(add_..._to_server, SchedulerApi),))
>>> run_service(SCHEDULER)  # in the service's __main__

See :mod:`.process` for the life of the process, :mod:`.context` for what a
service is handed, :mod:`.supervisor` and :mod:`.health` for background work and
readiness.
"""

from strata.core.readiness import BLOBS, KAFKA, POSTGRES, REDIS, Dependency
from strata.core.runtime.context import ServiceContext
from strata.core.runtime.process import run_service
from strata.core.runtime.settings import RuntimeSettings
from strata.core.runtime.spec import Endpoint, Loop, ServiceSpec

__all__ = [
    "BLOBS",
    "KAFKA",
    "POSTGRES",
    "REDIS",
    "Dependency",
    "Endpoint",
    "Loop",
    "RuntimeSettings",
    "ServiceContext",
    "ServiceSpec",
    "run_service",
]
