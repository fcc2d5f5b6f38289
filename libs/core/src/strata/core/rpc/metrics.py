"""gRPC calls counted by method and status code, and timed, for every Strata server.

:func:`measured_calls` is a layer of the edge (:mod:`strata.core.rpc.edge`) outside
the gate, so refusals (UNAUTHENTICATED, PERMISSION_DENIED) count too. Health and
reflection calls do not pass the edge and are not counted: probes would drown the
real ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from prometheus_client import Counter

from strata.core.metrics import Metrics
from strata.core.rpc.edge import Behaviour, Layer


def measured_calls(metrics: Metrics) -> Layer:
    """The layer that counts and times each call in ``metrics``."""

    def layer(method: str, behaviour: Behaviour) -> Behaviour:
        seconds = metrics.rpc_seconds.labels(method=method)
        handled = metrics.rpc_handled
        ok = handled.labels(method=method, code="OK")

        def count(counter: Counter, took: float) -> None:
            seconds.observe(took)
            counter.inc()

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = time.perf_counter()
            counter = ok
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                counter = handled.labels(method=method, code=_name(context.code()))
                raise
            except BaseException:
                counter = handled.labels(method=method, code="UNKNOWN")
                raise
            finally:
                # Counted on the loop's next turn: the answer need not wait for the locks
                # and the bucket search (bench/README.md).
                asyncio.get_running_loop().call_soon(count, counter, time.perf_counter() - began)

        return call

    return layer


def _name(code: Any) -> str:
    """The status name (``NOT_FOUND``); aio's context.code() may hand back an int or None."""
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return "UNKNOWN"
