"""What a published record carries, as it leaves for the producer.

Consumers and Kafka tools rely on it: the envelope's fields, the topic and key
from the event's option, and the ``event-type``/``event-id``/``traceparent``
headers, the same for events and dead letters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry import trace

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged
from strata.core.bus import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Publisher, event_headers
from strata.core.bus.publisher import Headers
from strata.core.envelope import open_envelope
from strata.core.telemetry import configure_tracing


@dataclass
class Wire:
    """Records as they left the publisher: (topic, key, value, headers)."""

    records: list[tuple[str, bytes | None, bytes, dict[str, str]]] = field(default_factory=list)

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Headers
    ) -> None:
        self.records.append((topic, key, value, {k: v.decode() for k, v in headers}))


@pytest.fixture
def wire() -> Wire:
    configure_tracing("test")
    return Wire()


def _changed(run_id: str = "run-7") -> TaskStateChanged:
    return TaskStateChanged(attempt=TaskAttemptRef(run_id=run_id, task_id="t", attempt=1))


async def test_topic_key_and_version_come_from_the_event_option(wire: Wire) -> None:
    sent = await Publisher(wire, "scheduler/host-1").publish(_changed("run-7"))

    [(topic, key, value, headers)] = wire.records
    event = open_envelope(value)
    assert (topic, key) == ("strata.runs.events", b"run-7")
    assert event.payload == _changed("run-7")
    assert event.envelope.event_id == sent.event_id
    assert event.envelope.producer == "scheduler/host-1"
    assert (event.envelope.key, event.envelope.schema_version) == ("run-7", 1)
    assert headers[HEADER_EVENT_TYPE] == "strata.scheduler.v1.TaskStateChanged"
    assert headers[HEADER_EVENT_ID] == sent.event_id


async def test_overrides_place_a_message_without_an_event_option(wire: Wire) -> None:
    await Publisher(wire, "p").publish(StringValue(value="x"), topic="t.x", key="k")

    [(topic, key, _, headers)] = wire.records
    assert (topic, key, headers[HEADER_EVENT_TYPE]) == ("t.x", b"k", "google.protobuf.StringValue")


async def test_a_message_without_an_event_option_and_no_topic_is_refused(wire: Wire) -> None:
    with pytest.raises(ValueError, match="StringValue is not an event"):
        await Publisher(wire, "p").publish(StringValue(value="x"))
    assert wire.records == []


async def test_the_trace_travels_in_headers_and_envelope(wire: Wire) -> None:
    with trace.get_tracer("test").start_as_current_span("request") as span:
        await Publisher(wire, "p").publish(_changed())

    [(_, _, value, headers)] = wire.records
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert trace_id in headers["traceparent"]
    assert trace_id in open_envelope(value).envelope.trace_context["traceparent"]


async def test_a_dead_letter_carries_the_same_headers_as_an_event(wire: Wire) -> None:
    letter = DeadLetter(topic="strata.runs.events", key=b"run-7", event_id="e-1", reason="bad")
    with trace.get_tracer("test").start_as_current_span("process"):
        await Publisher(wire, "p").publish_dead_letter(letter)

    [(topic, key, _, headers)] = wire.records
    assert (topic, key) == ("strata.runs.events.dlq", b"run-7")
    assert headers[HEADER_EVENT_TYPE] == "strata.common.v1.DeadLetter"
    assert headers[HEADER_EVENT_ID] == "e-1"
    assert "traceparent" in headers


def test_event_headers_are_type_id_then_the_trace() -> None:
    headers = event_headers("a.B", "id-1", {"traceparent": "00-x", "tracestate": "s"})

    assert headers == [
        ("event-type", b"a.B"),
        ("event-id", b"id-1"),
        ("traceparent", b"00-x"),
        ("tracestate", b"s"),
    ]


async def test_an_empty_key_is_refused_by_name(wire: Wire) -> None:
    with pytest.raises(ValueError, match="key must be set"):
        await Publisher(wire, "p").publish(StringValue(value="x"), topic="t", key="")
    with pytest.raises(ValueError, match=r"TaskStateChanged\.attempt\.run_id is empty"):
        await Publisher(wire, "p").publish(_changed(""))
    assert wire.records == []


async def test_an_empty_topic_is_refused_by_name(wire: Wire) -> None:
    with pytest.raises(ValueError, match="topic must name"):
        await Publisher(wire, "p").publish(StringValue(value="x"), topic="", key="k")
