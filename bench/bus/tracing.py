"""Tracing as a service sets it up, plus a switch that also ships every span.

``configure_tracing`` with ``traces="off"`` still creates, records and ends every
span (their ids join the logs); it only skips exporting. That is the default of
every service, so it is what most rows measure. A service that exports uses a
``BatchSpanProcessor`` (``traces="otlp"``); to price that part without a
collector, :class:`SpanShipping` feeds a ``BatchSpanProcessor`` into memory, and
only while it is switched on, so the rows with and without export can be
interleaved in one process. OTLP's encoding and network send are not included.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from strata.core.settings import TelemetrySettings
from strata.core.telemetry import configure_tracing

SERVICE = "bench"


class SpanShipping(SpanProcessor):
    """A batch export of finished spans into memory, active only while :attr:`on`."""

    def __init__(self) -> None:
        self.on = False
        self._exporter = InMemorySpanExporter()
        self._batch = BatchSpanProcessor(self._exporter)

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
    """Install tracing the way a service does (exporting off) and add the switchable export."""
    provider = configure_tracing(SERVICE, TelemetrySettings(traces="off"))
    shipping = SpanShipping()
    provider.add_span_processor(shipping)
    return shipping
