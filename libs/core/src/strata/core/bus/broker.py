"""One process's connection to the event bus: FastStream's KafkaBroker on aiokafka.

FastStream runs the consumer loops, the group membership and the shutdown; this
module sets it up the way Strata's reliability rules need:

- the producer is idempotent with ``acks=all``;
- offsets are committed only after a record was handled or dead-lettered
  (``AckPolicy.NACK_ON_ERROR``: success commits, an error rewinds the partition
  to the record so it is read again);
- records reach :meth:`Consumer.receive` as they are on the wire: FastStream's
  body decoding is skipped, and header values that are not text cannot stop a
  record before it is dead-lettered;
- topics are never created on the fly (``declare=False``): the catalog
  (``strata.core.topics``) creates them with their partition counts.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from faststream.kafka import KafkaBroker
from faststream.kafka import Topic as KafkaTopic
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from google.protobuf.message import Message

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus.consumer import Consumer
from strata.core.bus.dead_letters import Record
from strata.core.bus.publisher import Publisher
from strata.core.settings import BusSettings, KafkaSettings
from strata.core.topics import Topic

Parse = Callable[[Record], Awaitable[StreamMessage[Record]]]


class Bus:
    """Publish and consume Strata events for the process of ``service``.

    Declare consumers (:meth:`consumer`) before :meth:`start`; publishing works as
    soon as the bus is started (or entered with ``async with``).
    """

    def __init__(
        self,
        service: str,
        *,
        kafka: KafkaSettings | None = None,
        settings: BusSettings | None = None,
    ) -> None:
        if not service:
            raise ValueError("service must name the Strata service, got an empty string")
        self.settings = settings or BusSettings()
        self.kafka = kafka or KafkaSettings()
        self.name = self.settings.producer or f"{service}/{socket.gethostname()}"
        self.broker = KafkaBroker(
            self.kafka.bootstrap,
            client_id=self.name,
            enable_idempotence=True,
            acks="all",
            linger_ms=self.settings.linger_ms,
            # FastStream logs every record at this level: keep it off the hot path.
            log_level=logging.DEBUG,
        )
        self.publisher = Publisher(self.broker, producer=self.name)
        self._consumers: dict[tuple[str, str], Consumer] = {}
        self._started = False

    def consumer(self, topic: Topic | str, *, group: str) -> Consumer:
        """A consumer of ``topic`` in consumer group ``group``; register its handlers next.

        One per topic and group: all handlers of a group share its offsets.
        """
        name = topic.name if isinstance(topic, Topic) else topic
        if self._started:
            raise RuntimeError(f"declare the consumer of {name!r} before Bus.start()")
        if (name, group) in self._consumers:
            raise ValueError(
                f"group: {group!r} already consumes {name!r} on this bus; "
                "register more handlers on that consumer"
            )
        consumer = Consumer(name, group, publisher=self.publisher, settings=self.settings)
        self._consumers[name, group] = consumer
        subscriber = self.broker.subscriber(
            KafkaTopic(name, declare=False),
            group_id=group,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            auto_offset_reset=self.settings.auto_offset_reset,
            fetch_min_bytes=1,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            parser=_parse_with_any_headers,
            decoder=_raw_body,
            no_reply=True,
        )

        async def receive(message: KafkaMessage) -> None:
            await consumer.receive(message.raw_message)

        subscriber(receive)
        return consumer

    async def publish(
        self, topic: Topic | str, message: Message, *, key: str, schema_version: int = 1
    ) -> Envelope:
        """See :meth:`Publisher.publish`."""
        return await self.publisher.publish(topic, message, key=key, schema_version=schema_version)

    async def publish_sealed(
        self, topic: Topic | str, envelope: Envelope | bytes, *, key: str | None = None
    ) -> None:
        """See :meth:`Publisher.publish_sealed`."""
        await self.publisher.publish_sealed(topic, envelope, key=key)

    async def start(self) -> None:
        """Connect the producer and start every declared consumer."""
        self._started = True
        await self.broker.start()

    async def stop(self) -> None:
        """Let in-flight handlers finish, leave the consumer groups, flush the producer."""
        await self.broker.stop()
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _parse_with_any_headers(record: Record, parse: Parse) -> StreamMessage[Record]:
    """FastStream's parser, minus its failure on header values that are not UTF-8.

    Such a header would otherwise stop the record before the consumer sees it, and
    a later commit would skip it unseen. The parsed message keeps the original
    record, so a dead letter still holds every header byte for byte.
    """
    if all(_is_text(value) for _, value in record.headers):
        return await parse(record)
    readable = [(key, value) for key, value in record.headers if _is_text(value)]
    message = await parse(dataclasses.replace(record, headers=readable))
    message.raw_message = record
    return message


async def _raw_body(message: StreamMessage[Record], decode: Any) -> bytes:
    """The record's bytes as they are: the envelope is opened by the consumer."""
    body = message.body
    return body if isinstance(body, bytes) else b""


def _is_text(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True
