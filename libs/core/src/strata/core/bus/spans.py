"""The spans of the event bus, after OpenTelemetry's messaging conventions.

- ``send <topic>`` (PRODUCER) around each publish; its context travels with the
  event, in the record headers and in the envelope.
- ``process <topic>`` (CONSUMER) around each handler run, continuing the
  producer's trace: from the record headers, else from the envelope.
- ``process <topic>`` around a batch handler run: a trace of its own, linked to
  the producer span of every event in the batch.

Every event pays for these, so they cost only what they give. A span that the
tracer provider would not record (``traces="off"``, see
:func:`strata.core.telemetry.span_sampler`) gives nothing but its ids, and when
there is a trace to continue, the ids of that trace do the same job: the trace id
still joins the logs of every process the event passes. So such a span is not
made at all: the incoming trace context travels on unchanged, or, when there is
none, a new one with fresh ids (:func:`strata.core.telemetry.new_trace`). Making
the span costs tens of µs per side warm, and several times that on the cold
caches of a single event (measured here): more than the rest of what the Bus does.
Attributes and links are only built for spans that are recorded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from strata.core.bus.dead_letters import Record
from strata.core.envelope import Event
from strata.core.telemetry import (
    context_from_carrier,
    extract_context,
    has_trace_context,
    new_trace,
    records_span,
    trace_carrier,
)

_tracer = trace.get_tracer("strata.core.bus")


@contextmanager
def sending(topic: str, key: str, parent: Context | None = None) -> Iterator[dict[str, str]]:
    """A PRODUCER span around one send; yields the W3C fields to send with the event.

    ``parent`` is the context to continue (default: the current one), e.g. the
    trace an outbox row was sealed in.
    """
    name = f"send {topic}"
    unrecorded = _unrecorded(parent, name, trace.SpanKind.PRODUCER)
    if unrecorded is not None:
        yield trace_carrier(unrecorded)
        return
    span = _tracer.start_span(name, context=parent, kind=trace.SpanKind.PRODUCER)
    if span.is_recording():
        span.set_attributes(
            {
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.kafka.message.key": key,
            }
        )
    try:
        yield trace_carrier(trace.set_span_in_context(span, parent))
    except BaseException as exc:
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        span.end()


def processing(
    record: Record, event: Event | None, group: str
) -> AbstractContextManager[trace.Span]:
    """The current span while one record is handled or dead-lettered."""
    parent = producer_context(record, event)
    name = f"process {record.topic}"
    unrecorded = _unrecorded(parent, name, trace.SpanKind.CONSUMER)
    if unrecorded is not None:
        return _continuing(unrecorded)
    span = _tracer.start_span(name, context=parent, kind=trace.SpanKind.CONSUMER)
    if span.is_recording():
        span.set_attributes(_process_attributes(record, group))
        if event is not None:
            span.set_attribute("messaging.message.id", event.event_id)
    return trace.use_span(span, end_on_exit=True)


def processing_batch(
    records: Sequence[tuple[Record, Event]], group: str
) -> AbstractContextManager[trace.Span]:
    """The current span while a batch handler runs: linked to each event's producer."""
    first, _ = records[0]
    span = _tracer.start_span(
        f"process {first.topic}", context=Context(), kind=trace.SpanKind.CONSUMER
    )
    if span.is_recording():
        span.set_attributes(_process_attributes(first, group))
        span.set_attribute("messaging.batch.message_count", len(records))
        for record, event in records:
            parent = trace.get_current_span(producer_context(record, event)).get_span_context()
            if parent.is_valid:
                span.add_link(parent)
    return trace.use_span(span, end_on_exit=True)


def producer_context(record: Record, event: Event | None) -> Context:
    """The producer's trace: from the headers, else from the envelope, else a new one."""
    context = extract_context(record.headers)
    if not has_trace_context(context) and event is not None:
        context = context_from_carrier(event.envelope.trace_context)
    return context


def _unrecorded(parent: Context | None, name: str, kind: trace.SpanKind) -> Context | None:
    """The context to go on in instead of a span that would not be recorded, else None.

    That is ``parent`` (default: the current context) when it holds a trace, else
    a new trace: fresh ids, as the tracer would give an unrecorded span.
    """
    context = otel_context.get_current() if parent is None else parent
    if records_span(context, name, kind):
        return None
    return context if has_trace_context(context) else new_trace(context)


@contextmanager
def _continuing(context: Context) -> Iterator[trace.Span]:
    """``context`` is current for the block: the handler runs in the producer's trace."""
    token = otel_context.attach(context)
    try:
        yield trace.get_current_span(context)
    finally:
        otel_context.detach(token)


def _process_attributes(record: Record, group: str) -> dict[str, str | int]:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group,
    }
