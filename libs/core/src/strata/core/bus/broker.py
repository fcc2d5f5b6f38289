"""One process's connection to the event bus: FastStream's KafkaBroker plus aiokafka readers.

The Bus sets Kafka up the way Strata's reliability rules need:

- the producer (FastStream's ``KafkaBroker``) is idempotent with ``acks=all``;
- each consumer is one :class:`~strata.core.bus.subscription.Subscription`, an
  aiokafka consumer that hands records to :meth:`Consumer.process` as they are on
  the wire (why not a FastStream subscriber: see that module);
- offsets are committed only up to records that were handled or dead-lettered,
  in the background and before partitions are given up
  (:mod:`strata.core.bus.offsets`): at least once, with redeliveries absorbed by
  the consumers' inbox;
- FastStream's own log lines go through the process's logging
  (:mod:`strata.core.logging`), not to stdout in a format of their own;
- topics are never created on the fly: the catalog (``strata.core.topics``)
  creates them with their partition counts.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Self

from faststream.kafka import KafkaBroker
from google.protobuf.message import Message

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.bus.consumer import Consumer
from strata.core.bus.publisher import Publisher
from strata.core.bus.subscription import Subscription
from strata.core.settings import BusSettings, KafkaSettings
from strata.core.topics import Topic

FASTSTREAM_LOGGER = logging.getLogger("strata.core.bus.faststream")
"""Where FastStream's own lines go: a plain logger that propagates to the handler of
:func:`strata.core.logging.configure_logging`, at the process's log level. FastStream's
default would print to stdout in its own format, and its ``faststream`` logger does
not propagate, hence a name outside that tree."""


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
            logger=FASTSTREAM_LOGGER,
        )
        self.publisher = Publisher(self.broker, producer=self.name)
        self._consumers: dict[tuple[str, str], Consumer] = {}
        self._subscriptions: list[Subscription] = []
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
        """Connect the producer, then start every declared consumer."""
        self._started = True
        await self.broker.start()
        try:
            for consumer in self._consumers.values():
                subscription = Subscription(
                    consumer, kafka=self.kafka, settings=self.settings, client_id=self.name
                )
                await subscription.start()
                self._subscriptions.append(subscription)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Let each consumer finish the record in hand and commit, then flush the producer.

        Consumers stop first: a handler may still publish (or dead-letter) as it ends.
        """
        try:
            while self._subscriptions:
                await self._subscriptions.pop().stop()
        finally:
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
