"""Seal events into the common envelope and open them again.

Every event on Kafka is a ``strata.common.v1.Envelope`` whose payload is a packed
protobuf message. Sealing is shared by the bus (direct publish) and the outbox
(publish after commit), so both put the same bytes on the wire. Opening checks the
envelope field by field and names what is wrong, which is the reason a dead-letter
record carries.

Both run for every event, so they avoid work that does not need repeating: the
payload class of each type is looked up once, the time is taken as an integer
(no datetime object), and a well-formed envelope is checked in one expression.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import symbol_database
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from strata.api.common.v1 import event_pb2
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.errors import StrataError

REQUIRED_FIELDS = ("event_id", "type", "occurred_at", "producer", "payload")


class MalformedEventError(StrataError):
    """Bytes that are not a well-formed envelope; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownEventTypeError(MalformedEventError):
    """A well-formed envelope whose payload type this process does not know."""


@dataclass(frozen=True)
class Event:
    """An opened envelope: its metadata and the decoded payload."""

    envelope: Envelope
    payload: Message

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def type(self) -> str:
        return self.envelope.type


@dataclass(frozen=True)
class Route:
    """Where an event goes, as its ``(strata.common.v1.event)`` option says."""

    topic: str
    key: str
    schema_version: int


def route_of(message: Message) -> Route:
    """The topic, key and schema version of ``message``, read from its event option.

    The key is the value of the option's ``key_field`` (nested fields joined by
    ``.``). Raises ValueError naming the message type when it is not an event or
    its key field is empty, so a publish never goes out unkeyed.
    """
    topic, key_path, version = _option_of(message.DESCRIPTOR)
    value: object = message
    for part in key_path:
        value = getattr(value, part)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{message.DESCRIPTOR.full_name}.{'.'.join(key_path)} is empty: it is the "
            "Kafka key that orders these events, so it must be set"
        )
    return Route(topic=topic, key=value, schema_version=version)


@functools.cache
def _option_of(descriptor: Descriptor) -> tuple[str, tuple[str, ...], int]:
    """Topic, key field path and schema version of an event type, read once per type."""
    options = descriptor.GetOptions()
    if not options.HasExtension(event_pb2.event):
        raise ValueError(
            f"{descriptor.full_name} is not an event: it has no (strata.common.v1.event) option"
        )
    event: event_pb2.EventOptions = options.Extensions[event_pb2.event]
    return event.topic, tuple(event.key_field.split(".")), event.schema_version or 1


def seal(
    payload: Message,
    *,
    key: str,
    producer: str,
    trace_context: Mapping[str, str] | None = None,
    schema_version: int = 1,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap ``payload`` in a new envelope with a fresh event id."""
    envelope = Envelope(
        event_id=event_id or str(uuid.uuid4()),
        type=payload.DESCRIPTOR.full_name,
        producer=producer,
        schema_version=schema_version,
        key=key,
        trace_context=trace_context,
    )
    if occurred_at is None:
        envelope.occurred_at.FromNanoseconds(time.time_ns())
    else:
        envelope.occurred_at.FromDatetime(occurred_at)
    envelope.payload.Pack(payload)
    return envelope


def open_envelope(data: bytes) -> Event:
    """Parse ``data`` into an :class:`Event`, or say exactly why it cannot be.

    Raises :class:`MalformedEventError` for bytes that are not an envelope or miss a
    required field, and :class:`UnknownEventTypeError` when the payload's type is not
    registered in this process (its ``_pb2`` module was never imported).
    """
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedEventError(f"not a strata.common.v1.Envelope: {exc}") from None
    if not _complete(envelope):
        missing = [f for f in REQUIRED_FIELDS if not _present(envelope, f)]
        raise MalformedEventError(f"envelope is missing field(s): {', '.join(missing)}")
    payload_type = envelope.payload.TypeName()
    if payload_type != envelope.type:
        raise MalformedEventError(
            f"envelope type {envelope.type!r} does not match payload type {payload_type!r}"
        )
    try:
        payload = _payload_class(payload_type).FromString(envelope.payload.value)
    except DecodeError as exc:
        raise MalformedEventError(f"payload does not decode as {payload_type!r}: {exc}") from None
    return Event(envelope=envelope, payload=payload)


_payload_classes: dict[str, type[Message]] = {}
"""Payload class of each event type seen so far; types never change within a process."""


def _payload_class(payload_type: str) -> type[Message]:
    cls = _payload_classes.get(payload_type)
    if cls is None:
        try:
            cls = symbol_database.Default().GetSymbol(payload_type)
        except KeyError:
            raise UnknownEventTypeError(f"unknown event type {payload_type!r}") from None
        _payload_classes[payload_type] = cls
    return cls


def _complete(envelope: Envelope) -> bool:
    """Every field of :data:`REQUIRED_FIELDS` is set (the common case, checked at once)."""
    return bool(
        envelope.event_id
        and envelope.type
        and envelope.producer
        and envelope.HasField("occurred_at")
        and envelope.HasField("payload")
    )


def _present(envelope: Envelope, field: str) -> bool:
    if field == "occurred_at":
        return envelope.HasField("occurred_at")
    if field == "payload":
        return envelope.HasField("payload")
    return bool(getattr(envelope, field))
