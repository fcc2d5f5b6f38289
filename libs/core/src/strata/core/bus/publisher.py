"""Put events on Kafka: sealed in the envelope, keyed for order, with the trace attached.

There is one way onto Kafka for every event: the producer of
:func:`strata.core.kafka.producer` (idempotent, ``acks=all``) and the headers of
:func:`event_headers`. :meth:`Publisher.publish`, dead letters and the outbox relay
all go through them, so a consumer or an operator's tool sees the same record
whichever path wrote it.

Every publish waits for the broker's acknowledgement from all in-sync replicas, so
a returned call means the event is durable. Topic, key and schema version come
from the event's ``(strata.common.v1.event)`` option (:func:`route_of`). The trace
context goes twice: in the record headers, where any Kafka tool sees it, and inside
the envelope, where it survives a trip through the outbox table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from google.protobuf.message import Message

from strata.api.common.v1 import event_pb2
from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus.spans import sending
from strata.core.envelope import Route, route_of, seal
from strata.core.telemetry import trace_carrier
from strata.core.topics import Topic, dead_letter_topic

HEADER_EVENT_TYPE = "event-type"
HEADER_EVENT_ID = "event-id"
DEAD_LETTER_TYPE = DeadLetter.DESCRIPTOR.full_name

Headers = list[tuple[str, bytes]]
"""Kafka record headers as aiokafka takes them."""


def event_headers(event_type: str, event_id: str, trace: Mapping[str, str]) -> Headers:
    """The record headers of every event: its type, its id and the trace context.

    Consumers skip event types they do not handle from ``event-type`` alone, without
    decoding the payload; ``trace`` (W3C ``traceparent``...) lets any Kafka tool
    follow the event's trace.
    """
    headers = [(HEADER_EVENT_TYPE, event_type.encode()), (HEADER_EVENT_ID, event_id.encode())]
    headers.extend((name, value.encode()) for name, value in trace.items())
    return headers


class RecordSender(Protocol):
    """What the publisher needs of a producer (``aiokafka.AIOKafkaProducer`` fits)."""

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Headers
    ) -> Any: ...


class Publisher:
    """Publishes events for one process, named ``producer`` in every envelope.

    ``kafka`` is a started producer of :func:`strata.core.kafka.producer`; its
    owner (the :class:`~strata.core.bus.Bus`) starts and stops it.
    """

    def __init__(self, kafka: RecordSender, producer: str) -> None:
        self._kafka = kafka
        self.producer = producer

    async def publish(
        self,
        message: Message,
        *,
        topic: Topic | str | None = None,
        key: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        """Seal ``message`` in a new envelope and publish it where its event option says.

        ``topic`` and ``key`` override the option (a message without one needs
        both). Returns the envelope, whose ``event_id`` consumers de-duplicate on.
        """
        if not isinstance(message, Message):
            raise TypeError(f"message must be a protobuf message, got {type(message).__name__}")
        route = _route(message, topic, key)
        with sending(route.topic, route.key) as carrier:
            envelope = seal(
                message,
                key=route.key,
                producer=self.producer,
                trace_context=carrier,
                schema_version=route.schema_version,
                event_id=event_id,
            )
            headers = event_headers(envelope.type, envelope.event_id, carrier)
            await self.send(route.topic, envelope.SerializeToString(), route.key, headers)
        return envelope

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` to its topic's dead-letter topic, keyed like the original.

        Its ``event-id`` header is the original event's id (empty if unreadable).
        """
        headers = event_headers(DEAD_LETTER_TYPE, letter.event_id, trace_carrier())
        await self.send(
            dead_letter_topic(letter.topic), letter.SerializeToString(), letter.key, headers
        )

    async def send(self, topic: str, value: bytes, key: str | bytes, headers: Headers) -> None:
        """Send one record and wait until every in-sync replica has it."""
        raw_key = key.encode() if isinstance(key, str) else key
        await self._kafka.send_and_wait(topic, value, key=raw_key or None, headers=headers)


def _route(message: Message, topic: Topic | str | None, key: str | None) -> Route:
    """The message's route, with ``topic`` and ``key`` put in place of its option's."""
    name = topic.name if isinstance(topic, Topic) else topic
    if name == "":
        raise ValueError("topic must name a Kafka topic, got an empty string")
    if key == "":
        raise ValueError("key must be set: it fixes the order of events, got an empty string")
    if name is not None and key is not None:
        return Route(topic=name, key=key, schema_version=_schema_version(message))
    route = route_of(message)
    return Route(name or route.topic, key or route.key, route.schema_version)


_versions: dict[str, int] = {}
"""Schema version of each message type seen so far; options never change in a process."""


def _schema_version(message: Message) -> int:
    """The option's schema version, or 1 for a message that is not a Strata event."""
    name: str = message.DESCRIPTOR.full_name
    version = _versions.get(name)
    if version is None:
        options = message.DESCRIPTOR.GetOptions()
        found = options.HasExtension(event_pb2.event)
        version = (found and options.Extensions[event_pb2.event].schema_version) or 1
        _versions[name] = version
    return version
