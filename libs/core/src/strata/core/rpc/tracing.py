"""Each gRPC call a Strata server handles runs in a SERVER span continuing the caller's trace.

:func:`traced_calls` is the outermost layer of the edge (:mod:`strata.core.rpc.edge`),
so refusals are traced too. The span is named and described as OpenTelemetry's own
gRPC instrumentation names it (``/pkg.Service/Method``; ``rpc.system``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``), so tools that know those
spans read these. Attributes that cost a parse per call (the peer's address) are
added only to a span that is recorded (:mod:`strata.core.telemetry`).
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from strata.core.rpc.edge import Behaviour, Layer
from strata.core.telemetry import extract_metadata

_STATUS_CODE = "rpc.grpc.status_code"


def traced_calls(tracer: trace.Tracer | None = None) -> Layer:
    """The layer that runs each call in a SERVER span (``tracer``: the global provider's)."""
    spans = tracer or trace.get_tracer(__name__)

    def layer(method: str, behaviour: Behaviour) -> Behaviour:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = extract_metadata(context.invocation_metadata())
            with spans.start_as_current_span(
                method,
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = await behaviour(request, context)
                except grpc.aio.AbortError:
                    if span.is_recording():
                        _ended(span, context, context.code())
                    raise
                except BaseException as exc:
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                    raise
                if span.is_recording():
                    _ended(span, context, grpc.StatusCode.OK)
                return result

        return call

    return layer


def _ended(span: Span, context: grpc.aio.ServicerContext, code: Any) -> None:
    """Mark a recorded span with the call's status code and where the call came from."""
    value = code.value[0] if isinstance(code, grpc.StatusCode) else code
    span.set_attribute(_STATUS_CODE, value if isinstance(value, int) else 2)
    if value not in (0, None):
        span.set_status(Status(StatusCode.ERROR, context.details() or ""))
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.split(",")[0].split(":", 1)[1].rpartition(":")
        span.set_attribute("net.peer.ip", host)
        span.set_attribute("net.peer.port", port)
