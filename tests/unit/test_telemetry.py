"""Trace context crosses process boundaries: Kafka headers, envelopes, gRPC metadata.

The gRPC tests run a real grpc.aio server on loopback in this process: the client
interceptors put the caller's trace into the call and the server's tracing layer
(:mod:`strata.core.rpc.tracing`) takes it out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry import trace
from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from strata.core.rpc.edge import rebuilt
from strata.core.rpc.tracing import traced_calls
from strata.core.settings import TelemetrySettings
from strata.core.telemetry import (
    client_interceptors,
    configure_tracing,
    context_from_carrier,
    current_trace_id,
    extract_context,
    extract_metadata,
    has_trace_context,
    inject_headers,
    inject_metadata,
    new_trace,
    records_span,
    span_sampler,
    trace_carrier,
    unrecorded_child,
)

SERVICE = "test.Echo"


@pytest.fixture(scope="module")
def tracer() -> trace.Tracer:
    configure_tracing("test")
    return trace.get_tracer("test")


def _trace_id(span: trace.Span) -> int:
    return span.get_span_context().trace_id


def _trace_id_of(context: object) -> int:
    return trace.get_current_span(context).get_span_context().trace_id  # type: ignore[arg-type]


def test_configure_tracing_installs_one_provider_for_the_process(tracer: trace.Tracer) -> None:
    first = configure_tracing("test")
    assert isinstance(first, TracerProvider)
    assert configure_tracing("another") is first
    assert first.resource.attributes["service.name"] != "another"


def test_kafka_headers_carry_the_trace(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("produce") as span:
        headers = inject_headers()

    assert dict(headers)["traceparent"].startswith(b"00-")
    assert _trace_id_of(extract_context(headers)) == _trace_id(span)


def test_unreadable_headers_cost_the_trace_not_the_record(tracer: trace.Tracer) -> None:
    context = extract_context([("traceparent", b"\xff\xfe"), ("tracestate", None)])
    assert not has_trace_context(context)


def test_an_envelope_carrier_continues_the_trace(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("seal") as span:
        carrier = trace_carrier()
    assert _trace_id_of(context_from_carrier(carrier)) == _trace_id(span)
    assert trace_carrier() == {}


def test_metadata_helpers_carry_the_trace_on_a_stream(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("assign") as span:
        metadata = inject_metadata([("authorization", "Bearer t")])

    assert ("authorization", "Bearer t") in metadata
    assert _trace_id_of(extract_metadata(metadata)) == _trace_id(span)
    assert not has_trace_context(extract_metadata(None))


def test_the_trace_id_is_known_inside_a_span_only(tracer: trace.Tracer) -> None:
    assert current_trace_id() is None
    with tracer.start_as_current_span("work") as span:
        assert current_trace_id() == format(_trace_id(span), "032x")


def _tracer_shipping(traces: str) -> trace.Tracer:
    settings = TelemetrySettings.model_validate({"traces": traces})
    return TracerProvider(sampler=span_sampler(settings)).get_tracer("test")


def test_spans_are_recorded_only_where_they_are_shipped() -> None:
    with _tracer_shipping("off").start_as_current_span("unshipped") as unshipped:
        recorded_unshipped = unshipped.is_recording()
        carrier = trace_carrier()
    with _tracer_shipping("otlp").start_as_current_span(
        "shipped", context=context_from_carrier(carrier)
    ) as shipped:
        recorded_shipped = shipped.is_recording()

    assert (recorded_unshipped, recorded_shipped) == (False, True)
    assert carrier["traceparent"].startswith("00-")
    assert _trace_id(shipped) == _trace_id(unshipped)


def test_a_new_trace_has_ids_but_is_not_recorded(tracer: trace.Tracer) -> None:
    context = new_trace()

    span_context = trace.get_current_span(context).get_span_context()
    assert span_context.is_valid
    assert not span_context.trace_flags.sampled
    assert not records_span(context, "process t", trace.SpanKind.CONSUMER)
    assert trace_carrier(context)["traceparent"].startswith("00-")


class Echo:
    """A gRPC service that answers with the trace id it runs in."""

    async def say(self, request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        return StringValue(value=current_trace_id() or "")

    async def refuse(self, request: StringValue, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.value}")

    async def count(
        self, request: StringValue, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[StringValue]:
        for _ in range(2):
            yield StringValue(value=current_trace_id() or "")


@pytest.fixture
def server_spans() -> InMemorySpanExporter:
    """Where the server's tracing layer records its spans (a provider of its own)."""
    return InMemorySpanExporter()


@pytest.fixture
async def channel(
    tracer: trace.Tracer, server_spans: InMemorySpanExporter
) -> AsyncIterator[grpc.aio.Channel]:
    provider = TracerProvider(sampler=ALWAYS_ON)  # the callers' spans are not sampled
    provider.add_span_processor(SimpleSpanProcessor(server_spans))
    async with _echo_server(provider.get_tracer("server")) as channel:
        yield channel


@contextlib.asynccontextmanager
async def _echo_server(server_tracer: trace.Tracer) -> AsyncIterator[grpc.aio.Channel]:
    """An Echo server behind the tracing layer of ``server_tracer``, and a channel to it
    whose calls carry the caller's trace."""
    echo = Echo()
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(
            echo.say, StringValue.FromString, StringValue.SerializeToString
        ),
        "Refuse": grpc.unary_unary_rpc_method_handler(
            echo.refuse, StringValue.FromString, StringValue.SerializeToString
        ),
        "Count": grpc.unary_stream_rpc_method_handler(
            echo.count, StringValue.FromString, StringValue.SerializeToString
        ),
    }
    layer = traced_calls(server_tracer)
    traced = {
        name: rebuilt(handler, partial(layer, f"/{SERVICE}/{name}"))
        for name, handler in handlers.items()
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, traced)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=client_interceptors()
        ) as channel:
            yield channel
    finally:
        await server.stop(None)


async def test_a_server_recording_nothing_still_runs_each_call_in_the_callers_trace(
    tracer: trace.Tracer,
) -> None:
    """Traces off: no span is recorded, yet the call's trace id is the caller's (its logs
    join the caller's), or a trace of its own when the caller sent none."""
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    async with _echo_server(provider.get_tracer("server")) as channel:
        say = channel.unary_unary(
            f"/{SERVICE}/Say", StringValue.SerializeToString, StringValue.FromString
        )
        count = channel.unary_stream(
            f"/{SERVICE}/Count", StringValue.SerializeToString, StringValue.FromString
        )
        with tracer.start_as_current_span("request") as span:
            reply = await say(StringValue(value="hi"))
            replies = [r.value async for r in count(StringValue(value="hi"))]
        alone = [(await say(StringValue(value="hi"))).value for _ in range(2)]

    assert reply.value == format(_trace_id(span), "032x")
    assert replies == [reply.value] * 2
    assert all(len(trace_id) == 32 and int(trace_id, 16) for trace_id in alone)
    assert alone[0] != alone[1] != reply.value
    assert exported.get_finished_spans() == ()


class _CountedIds(RandomIdGenerator):
    def __init__(self) -> None:
        self.drawn = 0

    def generate_span_id(self) -> int:
        self.drawn += 1
        return super().generate_span_id()

    def generate_trace_id(self) -> int:
        self.drawn += 1
        return super().generate_trace_id()


def test_an_unrecorded_child_draws_its_ids_once_and_only_when_asked(
    tracer: trace.Tracer,
) -> None:
    ids = _CountedIds()
    alone = trace.get_current_span(unrecorded_child(Context(), ids))
    assert ids.drawn == 0
    first = alone.get_span_context()
    assert ids.drawn == 2
    assert alone.get_span_context() is first
    assert ids.drawn == 2
    assert first.is_valid
    assert not first.is_remote
    assert not alone.is_recording()
    with tracer.start_as_current_span("caller") as caller:
        child = trace.get_current_span(unrecorded_child(get_current(), ids))
        assert child.get_span_context().trace_id == _trace_id(caller)
        assert child.get_span_context().span_id != caller.get_span_context().span_id
    assert ids.drawn == 3


async def test_a_unary_call_runs_in_the_callers_trace(
    tracer: trace.Tracer, channel: grpc.aio.Channel
) -> None:
    say = channel.unary_unary(
        f"/{SERVICE}/Say", StringValue.SerializeToString, StringValue.FromString
    )
    with tracer.start_as_current_span("request") as span:
        reply = await say(StringValue(value="hi"))

    assert reply.value == format(_trace_id(span), "032x")


async def test_a_streaming_call_runs_in_the_callers_trace(
    tracer: trace.Tracer, channel: grpc.aio.Channel
) -> None:
    count = channel.unary_stream(
        f"/{SERVICE}/Count", StringValue.SerializeToString, StringValue.FromString
    )
    with tracer.start_as_current_span("request") as span:
        replies = [reply.value async for reply in count(StringValue(value="hi"))]

    assert replies == [format(_trace_id(span), "032x")] * 2


async def test_each_call_is_a_server_span_with_its_method_and_status(
    tracer: trace.Tracer, channel: grpc.aio.Channel, server_spans: InMemorySpanExporter
) -> None:
    say = channel.unary_unary(
        f"/{SERVICE}/Say", StringValue.SerializeToString, StringValue.FromString
    )
    refuse = channel.unary_unary(
        f"/{SERVICE}/Refuse", StringValue.SerializeToString, StringValue.FromString
    )
    with tracer.start_as_current_span("request") as caller:
        await say(StringValue(value="hi"))
        with pytest.raises(grpc.aio.AioRpcError):
            await refuse(StringValue(value="model"))

    # The server ends its span after the status went out: the caller may be told first.
    async with asyncio.timeout(5):
        while True:
            spans = {span.name: span for span in server_spans.get_finished_spans()}
            if len(spans) == 2:
                break
            await asyncio.sleep(0.01)
    said, refused = spans[f"/{SERVICE}/Say"], spans[f"/{SERVICE}/Refuse"]
    assert said.name == f"/{SERVICE}/Say"
    assert said.kind == trace.SpanKind.SERVER
    assert said.context.trace_id == _trace_id(caller)
    assert said.attributes is not None
    assert refused.attributes is not None
    assert said.attributes["rpc.service"] == SERVICE
    assert said.attributes["rpc.method"] == "Say"
    assert said.attributes["rpc.grpc.status_code"] == 0
    assert said.status.status_code == trace.StatusCode.UNSET
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert refused.status.status_code == trace.StatusCode.ERROR
    assert refused.status.description == "no model"


def test_console_export_writes_each_span_to_stderr() -> None:
    script = (
        "from opentelemetry import trace\n"
        "from strata.core.settings import TelemetrySettings\n"
        "from strata.core.telemetry import configure_tracing\n"
        "configure_tracing('scheduler', TelemetrySettings())\n"
        "with trace.get_tracer('t').start_as_current_span('apply-workflow'): pass\n"
    )
    env = {**os.environ, "STRATA_TELEMETRY_TRACES": "console"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert '"name": "apply-workflow"' in done.stderr
    assert '"service.name": "scheduler"' in done.stderr
