"""One process's connection to the event bus: one aiokafka producer plus aiokafka readers.

The Bus sets Kafka up the way Strata's reliability rules need:

- one producer (:func:`strata.core.kafka.producer`: idempotent, ``acks=all``) for
  every record the process writes: its events, its dead letters and, handed
  :attr:`Bus.producer`, its outbox relay;
- each consumer is one :class:`~strata.core.bus.subscription.Subscription`, an
  aiokafka consumer that hands records to :meth:`Consumer.process` as they are on
  the wire;
- offsets are committed only up to records that were handled or dead-lettered,
  in the background and before partitions are given up
  (:mod:`strata.core.bus.offsets`): at least once, with redeliveries absorbed by
  the consumers' inbox;
- a consumer whose handler finds a dependency down pauses its partition until the
  dependency is back (:mod:`strata.core.bus.failures`), and says so in
  :class:`~strata.core.metrics.Metrics`;
- topics are never created on the fly: the catalog (``strata.core.topics``)
  creates them with their partition counts.

Why not FastStream's ``KafkaBroker`` for publishing: it wraps the same aiokafka
producer and adds only its own headers and a few layers per send, which the
dispatch path pays on every event (``bench/bus``).
"""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core import kafka as kafka_clients
from strata.core.bus.consumer import Consumer
from strata.core.bus.publisher import Publisher
from strata.core.bus.subscription import Subscription
from strata.core.metrics import Metrics
from strata.core.settings import BusSettings, KafkaSettings
from strata.core.topics import Topic


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
        metrics: Metrics | None = None,
    ) -> None:
        if not service:
            raise ValueError("service must name the Strata service, got an empty string")
        self.settings = settings or BusSettings()
        self.kafka = kafka or KafkaSettings()
        self.name = self.settings.producer or f"{service}/{socket.gethostname()}"
        self.metrics = metrics or Metrics()
        self._producer: AIOKafkaProducer | None = None
        self._publisher: Publisher | None = None
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
        consumer = Consumer(
            name,
            group,
            dead_letters=self._write_dead_letter,
            producer=self.name,
            settings=self.settings,
            metrics=self.metrics,
        )
        self._consumers[name, group] = consumer
        return consumer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer, for whatever else of the process writes to Kafka
        (the outbox relay): one configuration, one connection."""
        if self._producer is None:
            raise RuntimeError("the bus is not started: call Bus.start() first")
        return self._producer

    @property
    def publisher(self) -> Publisher:
        """Publishes through :attr:`producer`; available once the bus is started."""
        if self._publisher is None:
            raise RuntimeError("the bus is not started: call Bus.start() first")
        return self._publisher

    async def publish(
        self,
        message: Message,
        *,
        topic: Topic | str | None = None,
        key: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        """See :meth:`Publisher.publish`."""
        return await self.publisher.publish(message, topic=topic, key=key, event_id=event_id)

    async def _write_dead_letter(self, letter: DeadLetter) -> None:
        await self.publisher.publish_dead_letter(letter)

    async def start(self) -> None:
        """Connect the producer, then start every declared consumer."""
        self._started = True
        try:
            producer = kafka_clients.producer(
                self.kafka, client_id=self.name, linger_ms=self.settings.linger_ms
            )
            await producer.start()
            self._producer = producer
            self._publisher = Publisher(producer, producer=self.name)
            for consumer in self._consumers.values():
                subscription = Subscription(
                    consumer,
                    kafka=self.kafka,
                    settings=self.settings,
                    client_id=self.name,
                    metrics=self.metrics,
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
            await self.stop_consuming()
        finally:
            producer, self._producer, self._publisher = self._producer, None, None
            self._started = False
            if producer is not None:
                await producer.stop()

    async def stop_consuming(self, within: float | None = None) -> None:
        """Let each consumer finish the record in hand, commit and leave its group, side
        by side, within ``within`` seconds when given (what is left then is cut short and
        logged: see :meth:`Subscription.stop`); publishing still works (a service
        draining its calls may still publish)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        await asyncio.gather(*(s.stop(within) for s in subscriptions))

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
