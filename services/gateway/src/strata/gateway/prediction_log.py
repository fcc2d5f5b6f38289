"""The prediction log: every served prediction, produced to ``strata.predictions`` in the
background, in batches, from a bounded buffer.

A request only appends its records to the buffer (no await, no I/O): it never waits
for Kafka. Each record keeps the time its prediction was served, sealed as its
event's ``occurred_at`` (what the registry keeps as ``served_at``, and what the skew
report recomputes features as of), however long it waits in the buffer. One
background task waits ``linger`` seconds after the first record of a batch, then
takes up to ``batch`` records at a time, sends them all through the bus's producer
(idempotent, ``acks=all``) and waits for the acknowledgements together.

Why the linger: sent as they come, one client's predictions made a produce request
each, and those sends took about a fifth of the gateway's time under a single
client's Predict calls (py-spy). Each send (the produce request, its
acknowledgement) still delays the call that arrives meanwhile: with 20 ms of linger
a tenth of one client's sequential calls took about 1 ms more (p90 2.3 ms against a
p50 of 1.2); with the default of 1 s, p90 1.5 ms (bench/README.md). A prediction
thus reaches Kafka up to a second after its answer.

A batch Kafka does not acknowledge goes back to the front of the buffer and is sent
again after a backoff, so while Kafka is down the gateway keeps answering and the
log catches up when it returns. A resent record keeps its event id (the prediction
id), so consumers drop the duplicates a partial failure makes, as they drop any
redelivery.

The buffer is bounded (``capacity`` records): past it, new records are dropped,
counted (``strata_gateway_predictions_dropped_total``) and logged, never silently.
A record too large for Kafka (``MAX_RECORD_BYTES``) is dropped and counted the same
way, with its prediction id in the warning, and only it: sent, Kafka would refuse its
batch for good, and one oversized prediction would stop the log.
On SIGTERM the task flushes the buffer within the service's shutdown grace before it
ends; what Kafka did not take by then is counted the same way.

Why the bus's producer and not the transactional outbox: the outbox exists to commit
an event with the state change it announces, in one Postgres transaction. A
prediction changes no state the gateway keeps; writing each one to Postgres would put
a database round trip (and a dependency the gateway does not otherwise have) on the
hot path, for a guarantee with nothing to be atomic with.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from strata.api.gateway.v1.gateway_pb2 import PredictionLogged
from strata.core.bus import Bus, event_headers
from strata.core.bus.publisher import Headers
from strata.core.envelope import route_of, seal
from strata.core.runtime import ServiceContext
from strata.gateway.metrics import GatewayMetrics

log = structlog.stdlib.get_logger(__name__)

FIRST_BACKOFF = 0.2
LAST_BACKOFF = 5.0
ROUTE = route_of(PredictionLogged(entity_key="-"))
"""Topic and schema version of the log, from the event's option. A prediction with no
entity (all its features came with the request) is keyed by its id instead."""
WARN_EVERY = 5.0
"""Seconds between two warnings about the same trouble (drops, Kafka refusing)."""
MAX_RECORD_BYTES = 1_000_000
"""The largest record the log sends. Kafka refuses a batch over its ``message.max.bytes``
(1,048,588 bytes by default) for good; an idempotent producer's refused batch leaves
its sequence numbers behind, and later batches of that partition fail out of order.
So a record over this size (the batch's own header on top still fits) is dropped and
counted here, never sent."""
_PARTITIONER = DefaultPartitioner()
"""The producer's own default: a key goes to the partition ``producer.send`` would pick."""

_Served = tuple[PredictionLogged, datetime]
"""A record and when its prediction was served."""


class PredictionLog:
    """The buffer requests append to, and the task that empties it into Kafka."""

    def __init__(
        self, capacity: int, batch: int, metrics: GatewayMetrics, *, linger: float = 0.0
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError(f"capacity and batch must be positive, got {capacity} and {batch}")
        if linger < 0:
            raise ValueError(f"linger must be 0 or more seconds, got {linger}")
        self._capacity = capacity
        self._batch = batch
        self._linger = linger
        self._metrics = metrics
        self._buffer: deque[_Served] = deque()
        self._ready = asyncio.Event()
        self._warned = {"dropped": 0.0, "refused": 0.0}
        self._dropped_since_warning = 0
        self._flushed = False

    def record(self, records: Sequence[PredictionLogged], served_at: datetime) -> None:
        """Queue ``records`` of predictions served at ``served_at`` for Kafka; what does not
        fit is dropped and counted. Never blocks.

        Once the shutdown flush is over nothing sends any more: records are dropped.
        """
        room = 0 if self._flushed else max(self._capacity - len(self._buffer), 0)
        kept = records[:room]
        self._buffer.extend((record, served_at) for record in kept)
        self._metrics.buffered.set(len(self._buffer))
        dropped = len(records) - len(kept)
        if dropped:
            self._metrics.dropped.inc(dropped)
            self._dropped_since_warning += dropped
            if self._due("dropped"):
                log.warning(
                    "prediction log full or closed; predictions dropped from the log",
                    dropped=self._dropped_since_warning,
                    capacity=self._capacity,
                )
                self._dropped_since_warning = 0
        if kept:
            self._ready.set()

    async def run(self, context: ServiceContext) -> None:
        """The background task: send the buffer to Kafka, batch by batch, until cancelled.

        Cancelled at shutdown, it first flushes what is buffered, within the service's
        shutdown grace, and counts what it could not send.
        """
        self._metrics.attach(context.metrics.registry)
        bus = context.bus
        backoff = FIRST_BACKOFF
        try:
            while True:
                if not self._buffer:
                    self._ready.clear()
                    await self._ready.wait()
                if self._linger and len(self._buffer) < self._batch:
                    await asyncio.sleep(self._linger)
                if await self._send_batch(bus):
                    backoff = FIRST_BACKOFF
                    continue
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LAST_BACKOFF)
        except asyncio.CancelledError:
            await self._flush(bus, context.settings.service.shutdown_grace)
            raise

    async def _flush(self, bus: Bus, seconds: float) -> None:
        """Send what is buffered within ``seconds``; what is left is counted as dropped.

        Calls still draining keep appending while this runs, and it sends those too;
        a record arriving once the flush is over is counted by :meth:`record`.
        """
        buffered = len(self._buffer)
        try:
            async with asyncio.timeout(seconds):
                while self._buffer:
                    if not await self._send_batch(bus):
                        await asyncio.sleep(FIRST_BACKOFF)
        except TimeoutError:
            pass
        finally:
            self._flushed = True
            left = len(self._buffer)
            self._buffer.clear()
            self._metrics.buffered.set(0)
            if left:
                self._metrics.dropped.inc(left)
                log.warning(
                    "predictions not logged at shutdown: Kafka did not take them in time",
                    dropped=left,
                    seconds=seconds,
                )
            elif buffered:
                log.info("prediction log flushed at shutdown", buffered=buffered)

    async def _send_batch(self, bus: Bus) -> bool:
        """Send the next batch; False (the batch back at the front) if Kafka refused it.

        A batch interrupted by cancellation or a timeout goes back too, so the flush
        at shutdown sends it again (with its event ids: duplicates are dropped). A
        record too large for Kafka is dropped and counted instead of being sent.
        """
        batch = [self._buffer.popleft() for _ in range(min(self._batch, len(self._buffer)))]
        try:
            too_large = await _send(bus, batch)
        except Exception as error:
            self._buffer.extendleft(reversed(batch))
            self._metrics.log_failures.inc()
            if self._due("refused"):
                log.warning(
                    "Kafka did not take the prediction log; it is kept and retried",
                    buffered=len(self._buffer),
                    reason=repr(error),
                )
            return False
        except BaseException:
            self._buffer.extendleft(reversed(batch))
            raise
        for prediction_id, size in too_large:
            log.warning(
                "a prediction is too large for Kafka; it is dropped from the log",
                prediction_id=prediction_id,
                bytes=size,
                limit=MAX_RECORD_BYTES,
            )
        self._metrics.dropped.inc(len(too_large))
        self._metrics.logged.inc(len(batch) - len(too_large))
        self._metrics.buffered.set(len(self._buffer))
        return True

    def _due(self, what: str) -> bool:
        now = time.monotonic()
        if now - self._warned[what] < WARN_EVERY:
            return False
        self._warned[what] = now
        return True


async def _send(bus: Bus, batch: Sequence[_Served]) -> list[tuple[str, int]]:
    """Send ``batch`` at once and wait until Kafka acknowledged every record; the
    records too large for Kafka are not sent: their prediction ids and sizes."""
    producer = bus.producer
    batches = _Batches(producer, sorted(await producer.partitions_for(ROUTE.topic)))
    too_large = []
    for record, served_at in batch:
        key = record.entity_key or record.prediction_id
        envelope = seal(
            record,
            key=key,
            producer=bus.name,
            schema_version=ROUTE.schema_version,
            event_id=record.prediction_id,
            occurred_at=served_at,
        )
        value = envelope.SerializeToString()
        if len(value) + len(key) > MAX_RECORD_BYTES:
            too_large.append((record.prediction_id, len(value)))
            continue
        headers = event_headers(envelope.type, envelope.event_id, {})
        await batches.add(key.encode(), value, headers)
    await batches.acknowledged()
    return too_large


class _Batches:
    """Kafka record batches built here, one open per partition, instead of a
    ``producer.send`` per record: measured in one process, 12 against 24 ms of the
    loop per 1,000 records, which the serving loop gets back. A record goes to its
    key's partition, as the producer's default partitioner would send it."""

    def __init__(self, producer: AIOKafkaProducer, partitions: list[int]) -> None:
        self._producer = producer
        self._partitions = partitions
        self._open: dict[int, BatchBuilder] = {}
        self._sent: list[asyncio.Future[Any]] = []

    async def add(self, key: bytes, value: bytes, headers: Headers) -> None:
        partition = _PARTITIONER(key, self._partitions, self._partitions)
        builder = self._open.get(partition) or self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            await self._submit(builder, partition)
            builder = self._producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in a batch")
        self._open[partition] = builder

    async def acknowledged(self) -> None:
        """Submit the open batches, then wait for every batch's acknowledgement."""
        for partition, builder in self._open.items():
            await self._submit(builder, partition)
        self._open.clear()
        await asyncio.gather(*self._sent)

    async def _submit(self, builder: BatchBuilder, partition: int) -> None:
        sent = await self._producer.send_batch(builder, ROUTE.topic, partition=partition)
        self._sent.append(sent)
