"""Put events on Kafka: sealed in the envelope, keyed for order, with the trace attached.

Every publish waits for the broker's acknowledgement from all in-sync replicas
(the broker's producer is idempotent with ``acks=all``), so a returned call means
the event is durable. The trace context goes twice: in the record headers, where
any Kafka tool sees it, and inside the envelope, where it survives a trip through
the outbox table.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from google.protobuf.message import DecodeError, Message

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus.spans import sending
from strata.core.envelope import seal
from strata.core.telemetry import context_from_carrier, trace_carrier
from strata.core.topics import Topic, dead_letter_topic

HEADER_EVENT_TYPE = "event-type"
HEADER_EVENT_ID = "event-id"
DEAD_LETTER_TYPE = DeadLetter.DESCRIPTOR.full_name


class Publisher:
    """Publishes events for one process, named ``producer`` in every envelope."""

    def __init__(self, broker: KafkaBroker, producer: str) -> None:
        self._broker = broker
        self.producer = producer

    async def publish(
        self,
        topic: Topic | str,
        message: Message,
        *,
        key: str,
        schema_version: int = 1,
        event_id: str | None = None,
    ) -> Envelope:
        """Seal ``message`` in a new envelope and publish it to ``topic`` under ``key``.

        Returns the envelope, whose ``event_id`` consumers de-duplicate on.
        """
        name = _topic_name(topic)
        if not isinstance(message, Message):
            raise TypeError(f"message must be a protobuf message, got {type(message).__name__}")
        _require_key(key)
        with sending(name, key) as carrier:
            envelope = seal(
                message,
                key=key,
                producer=self.producer,
                trace_context=carrier,
                schema_version=schema_version,
                event_id=event_id,
            )
            headers = _event_headers(envelope, carrier)
            await self._send(name, envelope.SerializeToString(), key, headers)
        return envelope

    async def publish_sealed(
        self, topic: Topic | str, envelope: Envelope | bytes, *, key: str | None = None
    ) -> None:
        """Publish an envelope sealed earlier (by the outbox), bytes unchanged.

        ``key`` defaults to the envelope's own. The send continues the trace the
        envelope was sealed in, so a relayed event stays in its request's trace.
        """
        name = _topic_name(topic)
        data, sealed = _sealed(envelope)
        key = key or sealed.key
        _require_key(key)
        parent = context_from_carrier(sealed.trace_context)
        with sending(name, key, parent) as carrier:
            await self._send(name, data, key, _event_headers(sealed, carrier))

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` to its topic's dead-letter topic, keyed like the original."""
        headers = {HEADER_EVENT_TYPE: DEAD_LETTER_TYPE, **trace_carrier()}
        await self._send(
            dead_letter_topic(letter.topic), letter.SerializeToString(), letter.key, headers
        )

    async def _send(
        self, topic: str, value: bytes, key: str | bytes | None, headers: dict[str, str]
    ) -> None:
        raw_key = key.encode() if isinstance(key, str) else (key or None)
        await self._broker.publish(value, topic, key=raw_key, headers=headers)


def _event_headers(envelope: Envelope, carrier: dict[str, str]) -> dict[str, str]:
    """Headers of an event record: its identity and the send span's trace context."""
    return {HEADER_EVENT_TYPE: envelope.type, HEADER_EVENT_ID: envelope.event_id, **carrier}


def _sealed(envelope: Envelope | bytes) -> tuple[bytes, Envelope]:
    if isinstance(envelope, Envelope):
        return envelope.SerializeToString(), envelope
    try:
        return envelope, Envelope.FromString(envelope)
    except DecodeError as exc:
        raise ValueError(f"envelope: bytes are not a strata.common.v1.Envelope: {exc}") from None


def _topic_name(topic: Topic | str) -> str:
    name = topic.name if isinstance(topic, Topic) else topic
    if not name:
        raise ValueError("topic must name a Kafka topic, got an empty string")
    return name


def _require_key(key: str) -> None:
    if not key:
        raise ValueError("key must be set: it fixes the order of events, got an empty string")
