"""Dead-letter records: a record the consumer gave up on, kept whole, with the reason.

A dead letter holds the original bytes, key, headers and coordinates (topic,
partition, offset), so nothing about the record is lost and a tool can put it back
on its topic once the cause is fixed. It is written to ``<topic>.dlq`` keyed like
the original, and the consumer commits past the original only after that write
was acknowledged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka import ConsumerRecord
from google.protobuf.message import DecodeError

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope

Record: TypeAlias = ConsumerRecord[Any, Any]
"""A record as the consumer read it: bytes key and value (or None), raw headers."""

Cause: TypeAlias = DeadLetter.Cause.ValueType


def dead_letter(
    record: Record,
    *,
    cause: Cause,
    reason: str,
    attempts: int,
    group: str,
    consumer: str,
    failed_at: datetime | None = None,
) -> DeadLetter:
    """The dead-letter record for ``record``, which ``consumer`` in ``group`` gave up on."""
    letter = DeadLetter(
        value=record.value or b"",
        key=record.key or b"",
        headers=[DeadLetter.Header(key=k, value=v or b"") for k, v in record.headers],
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        cause=cause,
        reason=reason,
        attempts=attempts,
        consumer_group=group,
        consumer=consumer,
    )
    if record.timestamp is not None and record.timestamp >= 0:
        letter.record_time.FromMilliseconds(record.timestamp)
    letter.failed_at.FromDatetime(failed_at or datetime.now(UTC))
    letter.event_id, letter.event_type = _identity(record.value)
    return letter


def _identity(value: bytes | None) -> tuple[str, str]:
    """Event id and type of a possibly broken envelope, as far as they can be read."""
    envelope = Envelope()
    try:
        envelope.ParseFromString(value or b"")
    except DecodeError:
        return "", ""
    return envelope.event_id, envelope.type
