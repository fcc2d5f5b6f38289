"""Put events into the outbox inside the caller's transaction, one key at a time."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from google.protobuf.message import Message

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus.publisher import event_headers
from strata.core.envelope import route_of, seal
from strata.core.migrations import DbConnection, quote_schema
from strata.core.telemetry import trace_carrier

MAX_EVENT_BYTES = 1_048_576
"""Largest Kafka record an event may make: aiokafka's default ``max_request_size``,
just under the broker's default ``message.max.bytes``. Raise all three together."""

KEY_LOCK_CLASS = 0x5354_4B31
"""First key of the per-key advisory lock; the second is ``hashtext(schema/key)``."""


def channel(schema: str) -> str:
    """The NOTIFY channel that wakes the relay of ``schema``."""
    quote_schema(schema)
    return f"strata_outbox_{schema}"


@dataclass(frozen=True)
class _Row:
    topic: str
    envelope: Envelope


class Outbox:
    """The outbox of one service schema; ``producer`` names the service in every envelope.

    ``max_event_bytes`` is the largest record the producer and the broker take;
    a bigger event is refused here, while the caller can still act on it.
    """

    def __init__(self, schema: str, producer: str, *, max_event_bytes: int = MAX_EVENT_BYTES):
        self._quoted = quote_schema(schema)
        if not producer:
            raise ValueError("producer is empty: name the service that publishes the events")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be positive, got {max_event_bytes}")
        self.schema = schema
        self.producer = producer
        self.max_event_bytes = max_event_bytes

    async def publish(self, conn: DbConnection, *messages: Message) -> list[Envelope]:
        """Seal ``messages`` and add them to the outbox in the caller's open transaction.

        Topic, key and schema version come from each message's event option
        (:func:`strata.core.envelope.route_of`); the current trace goes along.
        Returns the envelopes, whose ``event_id`` consumers de-duplicate on.
        """
        trace = trace_carrier()
        rows = []
        for message in messages:
            route = route_of(message)
            envelope = seal(
                message,
                key=route.key,
                producer=self.producer,
                trace_context=trace,
                schema_version=route.schema_version,
            )
            rows.append(_Row(route.topic, envelope))
        await self._insert(conn, rows)
        return [row.envelope for row in rows]

    async def enqueue(self, conn: DbConnection, topic: str, *envelopes: Envelope) -> None:
        """Add envelopes sealed by the caller, for ``topic``, in the caller's open transaction."""
        if not topic:
            raise ValueError("topic is empty: name the Kafka topic the events go to")
        await self._insert(conn, [_Row(topic, envelope) for envelope in envelopes])

    async def _insert(self, conn: DbConnection, rows: Sequence[_Row]) -> None:
        """Lock each key (in sorted order), then insert every row and notify: one round trip.

        The locks are taken in a CTE that the insert joins, so every lock is held
        before the first id is drawn; sorted, so two multi-key writers cannot
        deadlock on each other's keys.
        """
        if not conn.is_in_transaction():
            raise RuntimeError(
                "the outbox must be written inside the transaction of the state change "
                "it announces: call it within `async with conn.transaction():`"
            )
        values = [self._checked(row) for row in rows]
        if not values:
            return
        columns = [list(column) for column in zip(*values, strict=True)]
        quoted = self._quoted
        await conn.execute(
            "WITH locked AS (SELECT count(pg_advisory_xact_lock($1, hashtext($2 || '/' || k)))"
            " FROM (SELECT DISTINCT k FROM unnest($4::text[]) AS k ORDER BY k) AS keys),"
            f" added AS (INSERT INTO {quoted}.outbox"
            " (topic, key, event_id, event_type, payload, headers)"
            " SELECT t, k, e, y, p, h::jsonb FROM locked, unnest($3::text[], $4::text[],"
            " $5::uuid[], $6::text[], $7::bytea[], $8::text[]) AS r(t, k, e, y, p, h)"
            " RETURNING 1) SELECT pg_notify($9, '')",
            KEY_LOCK_CLASS,
            self.schema,
            *columns,
            channel(self.schema),
        )

    def _checked(self, row: _Row) -> tuple[str, str, uuid.UUID, str, bytes, str]:
        """The row's column values, after checking the envelope and the record size."""
        envelope = row.envelope
        key, event_id = _key_of(envelope), _event_id_of(envelope)
        if not envelope.type:
            raise ValueError(f"envelope.type is empty (event {envelope.event_id}): seal() sets it")
        payload = envelope.SerializeToString()
        trace = dict(envelope.trace_context)
        headers = event_headers(envelope.type, envelope.event_id, trace)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key.encode(), payload, headers)
        if size > self.max_event_bytes:
            raise ValueError(
                f"event {envelope.event_id} ({envelope.type}) is {size} bytes as a Kafka "
                f"record, over the limit of {self.max_event_bytes} bytes (max_event_bytes, the "
                "producer's max_request_size, the broker's message.max.bytes): keep large "
                "data in the blob store and send its reference"
            )
        return row.topic, key, event_id, envelope.type, payload, json.dumps(trace)


def _key_of(envelope: Envelope) -> str:
    if not envelope.key:
        raise ValueError(
            f"envelope.key is empty (event {envelope.event_id}): "
            "the outbox publishes by key to keep per-key order; seal(..., key=...)"
        )
    return envelope.key


def _event_id_of(envelope: Envelope) -> uuid.UUID:
    try:
        return uuid.UUID(envelope.event_id)
    except ValueError:
        raise ValueError(f"envelope.event_id {envelope.event_id!r} is not a UUID") from None
