"""gRPC calls counted by method and status code, and timed, for every Strata server.

:class:`MetricsInterceptor` runs outside the edge (:mod:`strata.core.rpc.edge`), so
refusals (UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE while starting) count
too. Health and reflection calls are not counted: probes would drown the real ones.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from strata.core.metrics import Metrics
from strata.core.rpc.auth import is_open
from strata.core.rpc.edge import Behaviour, rebuilt


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times each call of a Strata service in ``metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or is_open(method):
            return handler
        return rebuilt(handler, lambda behaviour: self._measured(behaviour, method))

    def _measured(self, behaviour: Behaviour, method: str) -> Behaviour:
        handled = self._metrics.rpc_handled
        seconds = self._metrics.rpc_seconds.labels(method=method)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                seconds.observe(time.perf_counter() - began)
                handled.labels(method=method, code=_name(code)).inc()

        return call


def _name(code: Any) -> str:
    """The status name (``NOT_FOUND``); aio's context.code() may hand back an int."""
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return "UNKNOWN"
