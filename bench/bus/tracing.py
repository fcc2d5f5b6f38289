"""Tracing as a service sets it up, plus a switch that records and ships every span.

A service with ``traces="off"`` (every service's default) gives each span ids that
travel with its events and join its logs, but records nothing
(:func:`strata.core.telemetry.span_sampler`): that is what most rows measure. A
service that exports (``traces="otlp"``) records every span and hands it to a
``BatchSpanProcessor``. To price that without a collector, :class:`SpanShipping`
records spans and feeds a ``BatchSpanProcessor`` into memory, only while it is
switched on, so rows with and without export can be interleaved in one process.
OTLP's encoding and network send are not included.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from strata.core.settings import TelemetrySettings
from strata.core.telemetry import span_sampler

SERVICE = "bench"


class SpanShipping(SpanProcessor, Sampler):
    """While :attr:`on`: spans are sampled as with ``traces="otlp"`` and batch-exported
    into memory; while off: as with ``traces="off"``."""

    def __init__(self) -> None:
        self.on = False
        self._off = span_sampler(TelemetrySettings(traces="off"))
        self._shipped = span_sampler(TelemetrySettings(traces="otlp"))
        self._exporter = InMemorySpanExporter()
        self._batch = BatchSpanProcessor(self._exporter)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = self._shipped if self.on else self._off
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "bench switch between traces='off' and traces='otlp'"

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.on:
            self._batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._batch.force_flush(timeout_millis)

    def drain(self) -> int:
        """Flush what is queued and forget it; return how many spans were exported."""
        self._batch.force_flush()
        count = len(self._exporter.get_finished_spans())
        self._exporter.clear()
        return count


def configure() -> SpanShipping:
    """Install the tracer provider a service installs, with the switch as its sampler.

    ``configure_tracing`` fixes the sampler when the provider is made; everything else
    (resource, no processor while exporting is off) is the same here.
    """
    shipping = SpanShipping()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: SERVICE}), sampler=shipping)
    provider.add_span_processor(shipping)
    trace.set_tracer_provider(provider)
    return shipping
