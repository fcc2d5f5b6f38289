"""Each gRPC call a Strata server handles runs in a SERVER span continuing the caller's trace.

:func:`traced_calls` is the outermost layer of the edge (:mod:`strata.core.rpc.edge`),
so refusals are traced too. The span is named and described as OpenTelemetry's own
gRPC instrumentation names it (``/pkg.Service/Method``; ``rpc.system``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``), so tools that know those
spans read these. Attributes that cost a parse per call (the peer's address) are
added only to a span that is recorded (:mod:`strata.core.telemetry`).

When the tracer records nothing (``STRATA_TELEMETRY_TRACES=off``, the default), a
call runs in an unrecorded child of the caller's span, made directly
(:func:`~strata.core.telemetry.unrecorded_child`) rather than through the SDK's
span machinery, which cost the gateway about 40 µs of CPU per ``Predict`` call for a
span nobody sees (bench/README.md).
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, Status, StatusCode

from strata.core.rpc.edge import Behaviour, Layer
from strata.core.telemetry import extract_metadata, unrecorded_child

_STATUS_CODE = "rpc.grpc.status_code"
_NO_PARENT = otel_context.Context()


def traced_calls(tracer: trace.Tracer | None = None) -> Layer:
    """The layer that runs each call in a SERVER span (``tracer``: the global provider's)."""
    spans = tracer or trace.get_tracer(__name__)
    if isinstance(spans, Tracer) and spans.sampler is ALWAYS_OFF:
        return _unrecorded_calls(spans.id_generator)

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


def _unrecorded_calls(ids: IdGenerator) -> Layer:
    """The layer for a tracer that records nothing: each call in an unrecorded span.

    The caller's context is extracted only from a call whose metadata holds a field
    the propagators read (``traceparent``...): most calls carry none, and the
    extraction would find nothing at the price of a walk through every propagator.
    """
    fields = frozenset(propagate.get_global_textmap().fields)

    def layer(method: str, behaviour: Behaviour) -> Behaviour:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = context.invocation_metadata() or ()
            carried = any(key in fields for key, _ in metadata)
            parent = extract_metadata(metadata) if carried else _NO_PARENT
            token = otel_context.attach(unrecorded_child(parent, ids))
            try:
                return await behaviour(request, context)
            finally:
                otel_context.detach(token)

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
