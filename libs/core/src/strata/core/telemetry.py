"""Traces that follow one request or one event across processes, over gRPC and Kafka.

A span's context travels as W3C trace context (``traceparent``/``tracestate``): in
gRPC metadata (the client interceptors below, from OpenTelemetry's own gRPC
instrumentation, and the server's edge, :mod:`strata.core.rpc.tracing`) and in
Kafka record headers and the event envelope (:mod:`strata.core.bus`). Every
process calls :func:`configure_tracing` once at start; from then on the log lines
of :mod:`strata.core.logging` carry the trace id of the span they were written in.

When exporting is ``off``, spans are not recorded: nothing would ever read their
names, attributes or timings, and recording is most of what a span costs (here
about 34 µs for a recorded span against 10 µs for one that is not). They still
get ids and trace context still travels, so trace ids join the logs of all
processes that took part in a request (:func:`span_sampler`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, Sampler

from strata.core.settings import TelemetrySettings

KafkaHeaders = Iterable[tuple[str, bytes | None]]
"""Record headers as aiokafka gives them: a list of (key, value) pairs."""

GrpcMetadata = Iterable[tuple[str, str | bytes]]
"""gRPC metadata: (key, value) pairs; binary values (``-bin`` keys) are bytes."""


def configure_tracing(service: str, settings: TelemetrySettings | None = None) -> TracerProvider:
    """Install the process-wide tracer provider for ``service`` and return it.

    ``settings.traces`` picks where finished spans go: ``off`` (nowhere), ``console``
    (stderr, one JSON object per span) or ``otlp`` (the collector at
    ``settings.otlp_endpoint``). Like OpenTelemetry's global provider, the first call
    in a process wins: later calls return the installed provider unchanged.
    """
    installed = trace.get_tracer_provider()
    if isinstance(installed, TracerProvider):
        return installed
    settings = settings or TelemetrySettings()
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service}), sampler=span_sampler(settings)
    )
    processor = _span_processor(settings)
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def span_sampler(settings: TelemetrySettings) -> Sampler:
    """Which spans are recorded: all of them when they are shipped, none when ``off``.

    A span that is not recorded still gets a trace id and a span id, and its
    context still goes out with every call and event, so logs join across
    processes either way. A process that ships spans records every span, whatever
    the caller decided: one that does not ship them marks its trace context "not
    sampled", and the spans of the processes after it would be lost otherwise.
    """
    return ALWAYS_OFF if settings.traces == "off" else ALWAYS_ON


def records_span(
    context: Context, name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL
) -> bool:
    """Whether a span ``name`` started under ``context`` would be recorded.

    Asks the sampler of the installed provider, as starting the span would; False
    when no SDK provider is installed (nothing is recorded then). For code that can
    skip making a span nobody would see (:mod:`strata.core.bus.spans`).
    """
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    if sampler is ALWAYS_OFF or not isinstance(sampler, Sampler):
        return False
    if sampler is ALWAYS_ON:
        return True
    trace_id = trace.get_current_span(context).get_span_context().trace_id
    decision = sampler.should_sample(context, trace_id, name, kind).decision
    return decision is not Decision.DROP


def new_trace(context: Context | None = None) -> Context:
    """``context`` (default: the current one) with a new trace in it, not recorded.

    The ids come from the installed provider's id generator, as they would for a
    span the sampler drops; for code that needs a trace to pass on but no span.
    """
    provider = trace.get_tracer_provider()
    ids = provider.id_generator if isinstance(provider, TracerProvider) else RandomIdGenerator()
    span_context = trace.SpanContext(
        trace_id=ids.generate_trace_id(),
        span_id=ids.generate_span_id(),
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)


def unrecorded_child(parent: Context, ids: IdGenerator) -> Context:
    """``parent`` with a child span in it that is not recorded: the parent's trace (a new
    one when it has none), a new span id from ``ids``, the parent's trace state.

    What a tracer whose sampler records nothing starts, without the work of starting a
    span (the sampler, attributes, a context manager): the server's edge runs every
    call in one when traces are off (:mod:`strata.core.rpc.tracing`), so the call's
    logs and outgoing calls still carry the caller's trace id. The ids are drawn the
    first time something asks for them (:class:`_UnrecordedChild`).
    """
    above = trace.get_current_span(parent).get_span_context()
    return trace.set_span_in_context(_UnrecordedChild(above, ids), parent)


class _UnrecordedChild(trace.NonRecordingSpan):
    """A span that records nothing, whose ids are drawn when first asked for.

    Most calls never ask (no log line, no outgoing call): drawing two random ids and
    building a span context for each of them was half the edge's tracing cost with
    traces off (bench/README.md). Asked from two threads at once, both get the same ids.
    """

    def __init__(self, parent: trace.SpanContext, ids: IdGenerator) -> None:
        super().__init__(trace.INVALID_SPAN_CONTEXT)
        self._parent = parent
        self._ids = ids

    def get_span_context(self) -> trace.SpanContext:
        drawn: trace.SpanContext | None = self.__dict__.get("_drawn")
        if drawn is None:
            above, ids = self._parent, self._ids
            child = trace.SpanContext(
                trace_id=above.trace_id if above.is_valid else ids.generate_trace_id(),
                span_id=ids.generate_span_id(),
                is_remote=False,
                trace_flags=_UNSAMPLED,
                trace_state=above.trace_state if above.is_valid else None,
            )
            drawn = self.__dict__.setdefault("_drawn", child)  # atomic: one winner
        return drawn

    def __repr__(self) -> str:
        return f"_UnrecordedChild({self.get_span_context()!r})"


_UNSAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)


def _span_processor(settings: TelemetrySettings) -> SpanProcessor | None:
    if settings.traces == "console":
        # Unbatched, so a span shows up next to the log lines it belongs with.
        return SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr))
    if settings.traces == "otlp":
        return BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    return None


def trace_carrier(context: Context | None = None) -> dict[str, str]:
    """The W3C fields of ``context`` (default: the current one) as text.

    This is what the envelope's ``trace_context`` map holds; empty when there is no
    valid span to continue.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def context_from_carrier(carrier: Mapping[str, str]) -> Context:
    """The context whose W3C fields are in ``carrier`` (e.g. ``envelope.trace_context``)."""
    return propagate.extract({key.lower(): value for key, value in carrier.items()})


def inject_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """Kafka record headers carrying ``context`` (default: the current one)."""
    return [(key, value.encode()) for key, value in trace_carrier(context).items()]


def extract_context(headers: KafkaHeaders) -> Context:
    """The producer's context from Kafka record headers; empty when they carry none.

    Header values that are missing or not text are skipped rather than failing the
    record: a broken header costs the trace link, never the event.
    """
    propagator = propagate.get_global_textmap()
    fields = _fields_of(propagator)
    carrier: dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        if value is None or name not in fields:
            continue
        try:
            carrier[name] = value.decode()
        except UnicodeDecodeError:
            continue
    return propagator.extract(carrier)


@functools.lru_cache(maxsize=4)
def _fields_of(propagator: TextMapPropagator) -> frozenset[str]:
    """The header names ``propagator`` reads: every other header is left undecoded."""
    return frozenset(field.lower() for field in propagator.fields)


def has_trace_context(context: Context) -> bool:
    """Whether ``context`` holds a valid span to continue (a parent was found)."""
    return trace.get_current_span(context).get_span_context().is_valid


def inject_metadata(
    metadata: GrpcMetadata = (), context: Context | None = None
) -> list[tuple[str, str | bytes]]:
    """gRPC ``metadata`` plus the W3C fields of ``context`` (default: the current one).

    The interceptors do this for every call; this is for messages that travel on a
    long-lived stream, where each one should continue its own trace.
    """
    return [*metadata, *trace_carrier(context).items()]


def extract_metadata(metadata: GrpcMetadata | None) -> Context:
    """The caller's context from gRPC metadata; empty when it carries none."""
    carrier = {key.lower(): value for key, value in (metadata or ()) if isinstance(value, str)}
    return propagate.extract(carrier)


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """grpc.aio channel interceptors: each call gets a CLIENT span whose context is sent
    in the call's metadata, for unary and streaming calls alike."""
    interceptors = aio_client_interceptors()  # type: ignore[no-untyped-call]
    return cast(list[grpc.aio.ClientInterceptor], interceptors)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside any span."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
