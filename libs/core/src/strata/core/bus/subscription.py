"""One member of a consumer group on one topic: fetch, hand over, commit behind the work.

Each fetch takes every record the reader has buffered, split by partition (the
broker's fetch limits bound it, 1 MiB a partition by default); the partitions are
processed side by side, the records of each strictly in order
(:meth:`Consumer.process`). Taking all partitions at once is what lets their
handlers overlap: aiokafka hands out one partition at a time when asked for fewer.
Offsets are committed in the background once enough records settled or enough
time passed (:mod:`strata.core.bus.offsets`), and always before partitions are
given up: on a rebalance, processing stops after the record in hand and the
settled offsets are committed before the partitions go to another member; on
:meth:`Subscription.stop` likewise before the group is left.

Why aiokafka directly and not a FastStream subscriber: FastStream wraps every
record in its message object, middleware stack and dependency injection (four
hops to a worker thread per record here), commits after every record and cannot
commit behind the work; its batch subscriber also sleeps a whole batch timeout
after each empty fetch, which the dispatch path cannot afford. Measured on this
machine, that frame cost about a millisecond per event. So the Bus reads with
aiokafka, configured like every Strata consumer (:func:`strata.core.kafka.consumer`),
while FastStream's ``KafkaBroker`` still owns the producer and its lifecycle, and
its ``TestKafkaBroker`` stays the in-memory double of the unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from strata.core import kafka
from strata.core.bus.consumer import Consumer
from strata.core.bus.dead_letters import Record
from strata.core.bus.offsets import Offsets
from strata.core.settings import BusSettings, KafkaSettings

IDLE_WAIT_MS = 1_000
"""Longest wait for records when no commit is pending; a record ends it at once."""
COMMIT_POLL_MS = 10
"""Shortest wait for records while a commit is due."""

T = TypeVar("T")

_log = structlog.get_logger("strata.core.bus")


class Subscription(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reads ``consumer.topic`` as a member of ``consumer.group`` while started."""

    def __init__(
        self, consumer: Consumer, *, kafka: KafkaSettings, settings: BusSettings, client_id: str
    ) -> None:
        self._consumer = consumer
        self._kafka = kafka
        self._settings = settings
        self._client_id = client_id
        self._offsets = Offsets(
            every=settings.commit_every, interval=settings.commit_interval_ms / 1000
        )
        self._reader: AIOKafkaConsumer | None = None
        self._loop: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None
        self._round = asyncio.Lock()
        """Held while fetched records are processed; a rebalance waits for it."""
        self._generation = 0
        """Bumped when partitions are revoked: records fetched before are stale."""
        self._waiting = False
        """Awaiting records or a pause, with nothing in hand."""
        self._troubled = False
        """Something failed in the last round: pause before the next fetch."""
        self._stopping = False
        self._revoking = False

    async def start(self) -> None:
        """Join the group and start reading in the background."""
        reader = kafka.consumer(
            self._kafka,
            group_id=self._consumer.group,
            client_id=self._client_id,
            auto_offset_reset=self._settings.auto_offset_reset,
            fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
        )
        reader.subscribe([self._consumer.topic], listener=self)
        await reader.start()
        self._reader = reader
        self._loop = asyncio.create_task(
            self._run(reader), name=f"bus: {self._consumer.topic} in {self._consumer.group}"
        )

    async def stop(self) -> None:
        """Finish the record in hand, commit every settled offset, leave the group."""
        self._stopping = True
        if self._loop is not None:
            if self._waiting:
                self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        if self._reader is not None:
            async with self._round:
                await self._commit_now(self._reader)
            await self._reader.stop()
            self._reader = None

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Before a rebalance: stop after the record in hand, commit what settled."""
        if self._reader is None:
            return
        self._revoking = True
        try:
            async with self._round:
                await self._commit_now(self._reader, revoked)
                self._offsets.forget(revoked)
                self._generation += 1
        finally:
            self._revoking = False

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Nothing to do: reading resumes from each partition's committed offset."""

    async def _run(self, reader: AIOKafkaConsumer) -> None:
        """Fetch and process until stopped; any failure costs a pause, never the loop."""
        while not self._stopping:
            try:
                fetched = await self._idle(reader.getmany(timeout_ms=self._wait_ms()))
                generation = self._generation
                async with self._round:
                    if fetched and generation == self._generation:
                        await self._process(reader, fetched)
                    self._maybe_commit(reader)
            except Exception as exc:
                _log.error("reading events failed, trying again", error=repr(exc), **self._where())
                self._troubled = True
            if self._troubled:
                self._troubled = False
                await self._idle(asyncio.sleep(self._settings.retry_backoff_max))

    async def _idle(self, wait: Awaitable[T]) -> T:
        """Await ``wait`` with nothing in hand: :meth:`stop` may cancel it."""
        self._waiting = True
        try:
            return await wait
        finally:
            self._waiting = False

    async def _process(
        self, reader: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Record]]
    ) -> None:
        """The partitions of one fetch side by side, each in order."""
        passes = [self._partition(reader, tp, records) for tp, records in fetched.items()]
        if len(passes) == 1:
            await passes[0]
        else:
            await asyncio.gather(*passes)

    async def _partition(
        self, reader: AIOKafkaConsumer, tp: TopicPartition, records: list[Record]
    ) -> None:
        """One partition's records of a fetch, in order.

        Whatever is left unsettled (the pass was halted, or a dead letter could not
        be written) is read again: the position goes back to the first such record,
        so no later commit can pass it.
        """
        unsettled = records[0].offset

        def settled(record: Record) -> None:
            nonlocal unsettled
            count, unsettled = record.offset + 1 - unsettled, record.offset + 1
            self._offsets.settle(tp, unsettled, count)

        try:
            await self._consumer.process(records, settled, self._halted)
        except Exception as exc:
            _log.error(
                "a record could not be settled, reading it again",
                error=repr(exc),
                partition=tp.partition,
                offset=unsettled,
                **self._where(),
            )
            self._troubled = True
        if unsettled <= records[-1].offset and tp in reader.assignment():
            reader.seek(tp, unsettled)

    def _halted(self) -> bool:
        return self._stopping or self._revoking

    def _maybe_commit(self, reader: AIOKafkaConsumer) -> None:
        """Start a background commit if one is due and none is in flight."""
        if self._committing is not None and not self._committing.done():
            return
        if self._offsets.due():
            offsets = self._offsets.take()
            if offsets:
                self._committing = asyncio.create_task(self._commit(reader, offsets))

    async def _commit_now(
        self, reader: AIOKafkaConsumer, partitions: Sequence[TopicPartition] | None = None
    ) -> None:
        """Wait for the commit in flight, then commit what settled since, and wait for it."""
        if self._committing is not None:
            await self._committing
            self._committing = None
        offsets = self._offsets.take(partitions)
        if offsets:
            await self._commit(reader, offsets)

    async def _commit(self, reader: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await reader.commit(offsets)
        except KafkaError as exc:
            # The offsets stay pending; the next commit carries them, and a record
            # that was settled but not committed is at worst read once more.
            self._offsets.failed()
            _log.warning("offset commit failed", error=repr(exc), **self._where())
        else:
            self._offsets.committed(offsets)

    def _wait_ms(self) -> int:
        """Until the next commit falls due, so an idle consumer still commits on time.

        At least :data:`COMMIT_POLL_MS`: a commit that falls due while the last one is
        still in flight must not turn the loop into a spin.
        """
        wait = self._offsets.wait()
        if wait is None:
            return IDLE_WAIT_MS
        return min(IDLE_WAIT_MS, max(COMMIT_POLL_MS, int(wait * 1000)))

    def _where(self) -> dict[str, str]:
        return {"topic": self._consumer.topic, "group": self._consumer.group}
